package api

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// jsonPaths lists the JSON fields of t as docs/status-json.md names them:
// "memory.limit", "leases[].owner.pid"; objects and arrays are fields too.
func jsonPaths(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && tag == "" {
			out = append(out, jsonPaths(f.Type, prefix)...)
			continue
		}
		if tag == "-" || !f.IsExported() {
			continue
		}
		path := prefix + tag
		out = append(out, path)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft == reflect.TypeFor[time.Time]():
		case ft.Kind() == reflect.Struct:
			out = append(out, jsonPaths(ft, path+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, jsonPaths(ft.Elem(), path+"[].")...)
		}
	}
	return out
}

// docs/status-json.md documents every field of the status, and nothing
// that is not one.
func TestStatusJSONIsDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/status-json.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ := strings.Cut(rest, "`")
			documented = append(documented, name)
		}
	}
	fields := jsonPaths(reflect.TypeFor[Status](), "")
	if len(fields) < 40 {
		t.Fatalf("found only %d fields in Status: %q", len(fields), fields)
	}
	for _, f := range fields {
		if !slices.Contains(documented, f) {
			t.Errorf("status field %s is not in docs/status-json.md", f)
		}
	}
	for _, d := range documented {
		if !slices.Contains(fields, d) {
			t.Errorf("docs/status-json.md documents %s, which Status has not", d)
		}
	}
}
