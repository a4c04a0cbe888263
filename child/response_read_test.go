package child

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

// response is one HTTP/1.1 response as a client reads it.
type response struct {
	status int
	header map[string][]string // keys in lower case
	body   []byte
}

func (r *response) get(name string) string {
	return strings.Join(r.header[strings.ToLower(name)], ",")
}

// readResponse reads one response from br. The child always frames bodies
// with Content-Length; head says the response answers HEAD and has none.
func readResponse(br *bufio.Reader, head bool) (*response, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if proto != "HTTP/1.1" || err != nil {
		return nil, fmt.Errorf("bad status line %q", line)
	}
	resp := &response{status: status, header: map[string][]string{}}
	for {
		line, err := readLine(br)
		if err != nil {
			return nil, err
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("bad header line %q", line)
		}
		resp.header[strings.ToLower(name)] = append(resp.header[strings.ToLower(name)], value)
	}
	if head || status < 200 || status == 204 || status == 304 {
		return resp, nil
	}
	cl := resp.header["content-length"]
	if len(cl) != 1 {
		return nil, fmt.Errorf("status %d with Content-Length %q", status, cl)
	}
	n, err := strconv.Atoi(cl[0])
	if err != nil {
		return nil, fmt.Errorf("bad Content-Length %q", cl[0])
	}
	resp.body = make([]byte, n)
	if _, err := io.ReadFull(br, resp.body); err != nil {
		return nil, fmt.Errorf("body of %d bytes: %w", n, err)
	}
	return resp, nil
}

// readLine reads a CRLF-terminated line and returns it without the CRLF.
func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		if err == io.EOF && line != "" {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	if !strings.HasSuffix(line, "\r\n") {
		return "", fmt.Errorf("line %q does not end in CRLF", line)
	}
	return strings.TrimSuffix(line, "\r\n"), nil
}

// responsesIn reads all the responses in out, which must hold nothing else.
// heads marks (by index) the responses that answer HEAD requests.
func responsesIn(t *testing.T, out []byte, heads ...int) []*response {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(out))
	var all []*response
	for {
		if _, err := br.Peek(1); err == io.EOF {
			return all
		}
		resp, err := readResponse(br, containsInt(heads, len(all)))
		if err != nil {
			t.Fatalf("response %d: %v", len(all)+1, err)
		}
		all = append(all, resp)
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
