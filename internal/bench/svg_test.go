package bench

import (
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

// wellFormed parses s as XML to the end and returns the root element's
// name and how many elements of each name it holds.
func wellFormed(t *testing.T, s string) (string, map[string]int) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	counts := map[string]int{}
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, s)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			counts[se.Name.Local]++
		}
	}
	return root, counts
}

func TestTimelineSVG(t *testing.T) {
	traces := []Trace{
		{Label: "static-j8 <&> rep 1", Samples: []Sample{{T: 0}, {T: 0.5, MemMiB: 3000, Jobs: 9}, {T: 1, MemMiB: 6100, Jobs: 12, OOM: 2}, {T: 1.5, MemMiB: 100, OOM: 2}}},
		{Label: "tokend", Samples: []Sample{{T: 0}, {T: 2, MemMiB: 1000, Jobs: 2}}},
		{Label: "empty"},
	}
	var b strings.Builder
	if err := WriteTimeline(&b, "heavy & co", 6144, traces); err != nil {
		t.Fatal(err)
	}
	root, n := wellFormed(t, b.String())
	if root != "svg" || n["polyline"] != 6 || n["title"] != 1 {
		t.Errorf("root %q, elements %v: want svg, 6 polylines, 1 OOM mark", root, n)
	}
}

func TestParetoSVG(t *testing.T) {
	rs, scs, sts := testResults()
	var b strings.Builder
	if err := WritePareto(&b, Summarize(rs, scs, sts), scs); err != nil {
		t.Fatal(err)
	}
	root, n := wellFormed(t, b.String())
	if root != "svg" || n["circle"] != 5 {
		t.Errorf("root %q, elements %v: want svg and 5 points", root, n)
	}
}

func TestNiceCeil(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{{0, 1}, {0.3, 0.5}, {1, 1}, {1.1, 2}, {37, 50}, {120, 200}, {6, 10}} {
		if got := niceCeil(c.in); got != c.want {
			t.Errorf("niceCeil(%g) = %g, want %g", c.in, got, c.want)
		}
	}
}
