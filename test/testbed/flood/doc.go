// Package flood builds and sends the test bed's floods: distinct large
// documents, hostile small ones, a victim's ordinary requests, and the
// tallies and percentiles the flood test, the benchmark and the soak
// report.
package flood
