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

// docs/status-json.md documents every field of the status, and
// docs/events-json.md every field of an event, and nothing that is not one.
func TestJSONIsDocumented(t *testing.T) {
	checkDocumented(t, "../docs/status-json.md", reflect.TypeFor[Status](), 40)
	checkDocumented(t, "../docs/events-json.md", reflect.TypeFor[Event](), 13)
}

func checkDocumented(t *testing.T, doc string, typ reflect.Type, least int) {
	t.Helper()
	b, err := os.ReadFile(doc)
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
	fields := jsonPaths(typ, "")
	if len(fields) < least {
		t.Fatalf("found only %d fields in %s: %q", len(fields), typ, fields)
	}
	for _, f := range fields {
		if !slices.Contains(documented, f) {
			t.Errorf("%s field %s is not in %s", typ, f, doc)
		}
	}
	for _, d := range documented {
		if !slices.Contains(fields, d) {
			t.Errorf("%s documents %s, which %s has not", doc, d, typ)
		}
	}
}
