// Package budget admits work by its weight, in bytes, within a fixed
// budget, so that what one replica holds in memory at once is bounded
// whatever its clients send, and a flood of heavy requests never makes a
// light one wait.
//
// A Lane is a weighted semaphore with a deadline: Acquire waits, first come
// first served, at most a fixed time for room, and otherwise returns a
// *BusyError that says how much is in flight. A lane may also cap how many
// admissions run at once, which bounds CPU as well as memory.
//
// A Budget is two lanes: light work (up to SmallWeight) has a lane of its
// own, so it never queues behind heavy work, and heavy work shares the rest.
// The webhook admits each request's SOPS payloads through a Budget before
// decrypting them (package mutate), and each large request body through a
// Lane before reading it (Gate). Sizes derive from the container's memory
// limit (MemoryLimit).
package budget
