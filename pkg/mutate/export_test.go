package mutate

import "net/http"

// NewProbeServer returns a Server with gate g whose reviews are answered by
// probe, which gets the body as the server read it: for tests of the gate.
func NewProbeServer(g Gate, probe func(w http.ResponseWriter, r *http.Request, body []byte)) *Server {
	return &Server{gate: g, reviews: probeReviewer(probe)}
}

type probeReviewer func(w http.ResponseWriter, r *http.Request, body []byte)

func (p probeReviewer) serveReview(w http.ResponseWriter, r *http.Request, body []byte, _ screen) {
	p(w, r, body)
}
