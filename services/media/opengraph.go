package media

import (
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/charset"
)

// Limits on what a page's metadata may put into a preview.
const (
	maxOGProperties = 64
	maxOGValueBytes = 2000
)

// ogIntegers are the Open Graph properties given as integers in a
// preview (the spec's example: og:image:width and og:image:height).
var ogIntegers = map[string]bool{
	"og:image:width": true, "og:image:height": true,
	"og:video:width": true, "og:video:height": true,
}

// pageMeta is what a page's <head> says about it.
type pageMeta struct {
	// og holds the page's og:* properties (the first value of each).
	og map[string]string
	// title and description are <title> and <meta name="description">,
	// the fallbacks for og:title and og:description.
	title, description string
}

// parsePage reads an HTML page's Open Graph metadata, its <title> and its
// meta description, decoding the page from the charset its Content-Type
// or its own <meta> declares. It reads until the <head> ends (a <body> or
// </head>), or until r ends: the caller bounds r, so a page larger than
// the limit is previewed from what came before the cut.
func parsePage(r io.Reader, contentType string) pageMeta {
	meta := pageMeta{og: map[string]string{}}
	utf8r, err := charset.NewReader(r, contentType)
	if err != nil {
		utf8r = r // an unknown charset: read it as UTF-8
	}
	z := html.NewTokenizer(utf8r)
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return meta // the end of the page, or of what is read of it
		case html.EndTagToken:
			if name, _ := z.TagName(); string(name) == "head" {
				return meta
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "body":
				return meta
			case "title":
				if tt == html.StartTagToken && meta.title == "" && z.Next() == html.TextToken {
					meta.title = cleanText(string(z.Text()))
				}
			case "meta":
				if hasAttr {
					meta.addMeta(z)
				}
			}
		}
	}
}

// addMeta takes a <meta> tag's property (or name) and content.
func (m *pageMeta) addMeta(z *html.Tokenizer) {
	var property, name, content string
	hasContent := false
	for {
		key, val, more := z.TagAttr()
		switch string(key) {
		case "property":
			property = strings.ToLower(strings.TrimSpace(string(val)))
		case "name":
			name = strings.ToLower(strings.TrimSpace(string(val)))
		case "content":
			content, hasContent = string(val), true
		}
		if !more {
			break
		}
	}
	if !hasContent {
		return
	}
	// Open Graph uses property=; many pages use name= for it too.
	key := property
	if !strings.HasPrefix(key, "og:") && strings.HasPrefix(name, "og:") {
		key = name
	}
	switch {
	case strings.HasPrefix(key, "og:") && len(key) > 3 && len(key) <= 64:
		if _, seen := m.og[key]; !seen && len(m.og) < maxOGProperties {
			m.og[key] = cleanText(content)
		}
	case name == "description" && m.description == "":
		m.description = cleanText(content)
	}
}

// preview is the preview's JSON object: the og:* properties with the
// fallbacks for og:title and og:description, integers where the spec has
// them. og:image stays the page's URL here; the caller replaces it.
func (m pageMeta) preview() map[string]any {
	out := map[string]any{}
	for k, v := range m.og {
		if v == "" {
			continue
		}
		if ogIntegers[k] {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
				out[k] = n
			}
			continue
		}
		out[k] = v
	}
	if _, ok := out["og:title"]; !ok && m.title != "" {
		out["og:title"] = m.title
	}
	if _, ok := out["og:description"]; !ok && m.description != "" {
		out["og:description"] = m.description
	}
	return out
}

// imageURL is the page's image: og:image, else og:image:url or
// og:image:secure_url (its aliases).
func (m pageMeta) imageURL() string {
	for _, k := range []string{"og:image", "og:image:url", "og:image:secure_url"} {
		if v := m.og[k]; v != "" {
			return v
		}
	}
	return ""
}

// cleanText collapses whitespace and bounds the length (on a rune
// boundary); invalid UTF-8 is replaced.
func cleanText(s string) string {
	s = strings.Join(strings.Fields(strings.ToValidUTF8(s, "\uFFFD")), " ")
	if len(s) <= maxOGValueBytes {
		return s
	}
	cut := maxOGValueBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
