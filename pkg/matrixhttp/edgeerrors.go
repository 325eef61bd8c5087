package matrixhttp

import (
	"bytes"
	"encoding/json"
	"net"
	"strconv"
)

// Go's HTTP server answers some malformed requests itself, before any
// handler runs, with a plain-text body: a header value holding control
// bytes (an upload's Content-Type with \x01), a missing Host header, an
// oversized header block, an unsupported transfer coding. It writes each
// such answer in one Write, as the status line followed by exactly these
// headers (net/http's server.go), so no handler's response (which has a
// Date header) looks like one.
const goErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// MatrixErrorsListener wraps the client HTTP listener so that those
// answers become Matrix errors, JSON with an errcode like every other
// error of the API: 400 M_INVALID_PARAM (M_NOT_JSON has no meaning for a
// header), 431 M_TOO_LARGE, 501 M_UNRECOGNIZED. Status codes stay as Go
// chose them. It must wrap a plain-text listener (under TLS it sees only
// ciphertext and changes nothing).
func MatrixErrorsListener(l net.Listener) net.Listener { return errorsListener{l} }

type errorsListener struct{ net.Listener }

func (l errorsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return errorsConn{c}, nil
}

type errorsConn struct{ net.Conn }

func (c errorsConn) Write(b []byte) (int, error) {
	if out, ok := rewriteGoError(b); ok {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// rewriteGoError turns one of net/http's own plain-text error answers into
// a Matrix error answer with the same status.
func rewriteGoError(b []byte) ([]byte, bool) {
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) {
		return nil, false
	}
	lineEnd := bytes.IndexByte(b, '\r')
	if lineEnd < 0 || !bytes.HasPrefix(b[lineEnd:], []byte(goErrorHeaders)) || lineEnd < len("HTTP/1.1 400") {
		return nil, false
	}
	status, err := strconv.Atoi(string(b[len("HTTP/1.1 ") : len("HTTP/1.1 ")+3]))
	if err != nil || status < 400 || status > 599 {
		return nil, false
	}
	msg := string(b[lineEnd+len(goErrorHeaders):])
	errcode := "M_INVALID_PARAM"
	switch status {
	case 431:
		errcode = "M_TOO_LARGE"
	case 501:
		errcode = "M_UNRECOGNIZED"
	}
	body, err := json.Marshal(map[string]string{"errcode": errcode, "error": msg})
	if err != nil {
		return nil, false
	}
	var out bytes.Buffer
	out.Write(b[:lineEnd])
	out.WriteString("\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ")
	out.WriteString(strconv.Itoa(len(body)))
	out.WriteString("\r\n\r\n")
	out.Write(body)
	return out.Bytes(), true
}
