package child

import (
	"fmt"
	"slices"
	"testing"
)

// parseAll runs the parser over buf the way a connection does: request after
// request until the input ends, a request is incomplete or one is rejected.
// It returns the lengths of the complete requests, the rejection status (0
// when none) and, when the input ends inside a request, the need the parser
// reported for it. buf is decoded in place; pass a copy.
func parseAll(buf []byte, lim Limits) (ns []int, status, need int) {
	var r Request
	for len(buf) > 0 {
		n, st := parse(buf, &r, &lim, &need)
		if st != 0 {
			return ns, st, 0
		}
		if n == 0 {
			return ns, 0, need
		}
		ns = append(ns, n)
		buf = buf[n:]
	}
	return ns, 0, 0
}

// checkPrefixes feeds every prefix of raw to the parser and reports the
// first prefix whose verdict contradicts the verdict on all of raw: a prefix
// may only complete the same requests, then wait for more bytes or fail with
// the same status; and when it waits for a request that raw completes, its
// need must not ask for more than that request holds.
func checkPrefixes(raw []byte, lim Limits) (k int, problem string) {
	full, fullStatus, _ := parseAll(slices.Clone(raw), lim)
	for k = 0; k <= len(raw); k++ {
		ns, status, need := parseAll(slices.Clone(raw[:k]), lim)
		if len(ns) > len(full) || !slices.Equal(ns, full[:len(ns)]) {
			return k, "completes different requests"
		}
		if status != 0 {
			if status != fullStatus || len(ns) != len(full) {
				return k, "rejects with status " + itoa(status) + ", the whole input with " + itoa(fullStatus)
			}
			continue
		}
		if need > 0 && len(ns) < len(full) {
			start := 0
			for _, n := range ns {
				start += n
			}
			if start+need > start+full[len(ns)] {
				return k, "needs " + itoa(need) + " bytes for a request of " + itoa(full[len(ns)])
			}
		}
	}
	return -1, ""
}

func TestParseSplitPoints(t *testing.T) {
	for _, c := range append(slices.Clone(validCases), rejectCases...) {
		raw := []byte(c.raw)
		ns, status, _ := parseAll(slices.Clone(raw), testLimits)
		if len(ns) != c.requests || status != c.status {
			t.Errorf("%s: whole input gives %d requests then status %d, want %d then %d",
				c.name, len(ns), status, c.requests, c.status)
			continue
		}
		if k, problem := checkPrefixes(raw, testLimits); k >= 0 {
			t.Errorf("%s: prefix of %d bytes %q %s", c.name, k, raw[:k], problem)
		}
	}
}

// parsed is what a handler would see of one request.
type parsed struct{ method, target, body string }

// parseWhole parses buf with parse, as one read holding all of it: request
// after request until the input ends, a request is incomplete or one is
// rejected. buf is decoded in place; pass a copy.
func parseWhole(buf []byte, lim Limits) (reqs []parsed, status int) {
	var r Request
	var need int
	for len(buf) > 0 {
		n, st := parse(buf, &r, &lim, &need)
		if st != 0 || n == 0 {
			return reqs, st
		}
		reqs = append(reqs, parsed{string(r.Method), string(r.Target), string(r.Body)})
		buf = buf[n:]
	}
	return reqs, 0
}

// parseFed parses the pieces as a connection receives them, one read per
// piece: it parses what it holds after each, resuming a chunked body where
// the last call stopped, skips parsing while the parser's need is not met,
// and keeps what is not complete the way the session does, less the bytes
// the decoder left behind. It returns the requests, the rejection status
// and the bytes the chunked decoder worked through.
func parseFed(pieces [][]byte, lim Limits) (reqs []parsed, status int, work int64) {
	var r Request
	var b bodyState
	var need int
	var held []byte
	for _, p := range pieces {
		held = append(held, p...)
		for len(held) > 0 && need <= len(held) {
			n, st := parseRequest(held, &r, &lim, &need, &b, true)
			if st != 0 {
				return reqs, st, b.work
			}
			if n == 0 {
				held = held[:len(held)-b.cut]
				b.cut = 0
				break
			}
			reqs = append(reqs, parsed{string(r.Method), string(r.Target), string(r.Body)})
			held = append([]byte(nil), held[n:]...)
		}
	}
	return reqs, 0, b.work
}

// splitAt cuts raw at the given offsets (ascending, within raw).
func splitAt(raw []byte, cuts ...int) [][]byte {
	var pieces [][]byte
	last := 0
	for _, c := range cuts {
		pieces = append(pieces, raw[last:c])
		last = c
	}
	return append(pieces, raw[last:])
}

// splitEvery cuts raw into pieces of size bytes.
func splitEvery(raw []byte, size int) [][]byte {
	var pieces [][]byte
	for len(raw) > size {
		pieces = append(pieces, raw[:size])
		raw = raw[size:]
	}
	return append(pieces, raw)
}

// checkFed compares raw parsed whole with raw fed in pieces: the same
// requests with the same bodies, then the same status; and the decoder's
// work stays linear in the input.
func checkFed(raw []byte, pieces [][]byte, lim Limits) string {
	want, wantStatus := parseWhole(slices.Clone(raw), lim)
	var cloned [][]byte
	for _, p := range pieces {
		cloned = append(cloned, slices.Clone(p))
	}
	got, status, work := parseFed(cloned, lim)
	if !slices.Equal(got, want) || status != wantStatus {
		return fmt.Sprintf("gives %d requests %q then status %d; whole, %d requests %q then %d",
			len(got), got, status, len(want), want, wantStatus)
	}
	if work > 4*int64(len(raw))+64 {
		return fmt.Sprintf("the chunked decoder worked through %d bytes for %d of input", work, len(raw))
	}
	return ""
}

// Every case, fed to a connection in two reads cut at every byte, in reads
// of 1 and of 7 bytes, parses as it does whole.
func TestParseResumedSplitPoints(t *testing.T) {
	for _, c := range append(slices.Clone(validCases), rejectCases...) {
		raw := []byte(c.raw)
		for k := 0; k <= len(raw); k++ {
			if problem := checkFed(raw, splitAt(raw, k), testLimits); problem != "" {
				t.Errorf("%s: cut after %d bytes %s", c.name, k, problem)
				break
			}
		}
		for _, size := range []int{1, 7} {
			if problem := checkFed(raw, splitEvery(raw, size), testLimits); problem != "" {
				t.Errorf("%s: in reads of %d bytes %s", c.name, size, problem)
			}
		}
	}
}
