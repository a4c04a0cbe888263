package child

import (
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
