package nixhook

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fixtures are real .drv files written by Nix 2.8 and 2.34 (see
// testdata/nix/README.md).
const fixtures = "../testdata/nix/drv"

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseRealDerivations(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Derivation
	}{
		// The harness's builds (testdata/nix/jobs.nix), Nix 2.34 and 2.8.
		{"4d4i2ijz9w4hfzhfzbzjdd567slr6zdd-tokend-e2e-1.drv", Derivation{Name: "tokend-e2e", Features: []string{"big-parallel"}}},
		{"4jchhl2a4vf60jh0igf9m3g1vsqrqf6p-tokend-e2e-1.drv", Derivation{Name: "tokend-e2e", Features: []string{"big-parallel"}}},
		// No pname: the name.
		{"c2sf2v3fb1yadjq854qvxm8wqrxkc85b-escapes-2.1.drv", Derivation{Name: "escapes-2.1", Features: []string{"big-parallel", "benchmark"}}},
		// Structured attributes: everything is in __json.
		{"gm2kp7mxaigl0a47pn1qlnnx7zawpfam-sa-1.0.drv", Derivation{Name: "sa", Features: []string{"big-parallel", "kvm"}}},
		// DrvWithVersion("xp-dyn-drv", ...): a dynamic derivation input.
		{"jgkrl684mxli5c8qc3bck73jvn9gy0ak-consumer-1.0.drv", Derivation{Name: "consumer", Features: []string{"big-parallel"}}},
		// Floating content-addressed outputs, two of them, and a deferred
		// output path: go-nix's parser rejects both.
		{"pi65y1njphr1c2rakzd73pzfhk532734-ca-multi.drv", Derivation{Name: "ca-multi"}},
		{"vh866m5v6qhsvq186xibbp5a8g8hh23s-deferred.drv", Derivation{Name: "deferred"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := ParseDerivation(fixture(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseUnescapes(t *testing.T) {
	env, err := parseEnv(fixture(t, "c2sf2v3fb1yadjq854qvxm8wqrxkc85b-escapes-2.1.drv"))
	if err != nil {
		t.Fatal(err)
	}
	// Its script, with every escape, is read past and not kept: the hook
	// keeps only the variables it reads.
	if _, kept := env["script"]; kept || env["name"] != "escapes-2.1" {
		t.Fatalf("env %q; want name escapes-2.1 and no script", env)
	}
	// The Nix expression said "line1\n\ttab \"quoted\" back\\slash\r$dollar ünï".
	env, err = parseEnv([]byte(`Derive([],[],[],"","",[],[("pname","line1\n\ttab \"quoted\" back\\slash\r$dollar ünï")])`))
	if want := "line1\n\ttab \"quoted\" back\\slash\r$dollar ünï"; err != nil || env["pname"] != want {
		t.Fatalf("pname = %q, %v; want %q", env["pname"], err, want)
	}
	// Like Nix's reader: a backslash before any other byte is that byte.
	env, err = parseEnv([]byte(`Derive([],[],[],"","",[],[("name","a\$b\\c")])`))
	if err != nil || env["name"] != `a$b\c` {
		t.Fatalf(`env %q, %v; want name a$b\c`, env, err)
	}
}

func TestParseRejects(t *testing.T) {
	valid := string(fixture(t, "4d4i2ijz9w4hfzhfzbzjdd567slr6zdd-tokend-e2e-1.drv"))
	for name, drv := range map[string]string{
		"empty":                   "",
		"not a derivation":        "hello",
		"json":                    `{"name":"x"}`,
		"trailing newline":        valid + "\n",
		"trailing term":           valid + `,[]`,
		"unknown version":         `DrvWithVersion("xp-other",[],[],[],"","",[],[("name","x")])`,
		"six fields":              `Derive([],[],[],"","",[])`,
		"eight fields":            `Derive([],[],[],"","",[],[("name","x")],[])`,
		"env pair of three":       `Derive([],[],[],"","",[],[("name","x","y")])`,
		"env pair of one":         `Derive([],[],[],"","",[],[("name")])`,
		"env key not a string":    `Derive([],[],[],"","",[],[(["name"],"x")])`,
		"duplicate env key":       `Derive([],[],[],"","",[],[("name","x"),("name","y")])`,
		"output of three":         `Derive([("out","","")],[],[],"","",[],[("name","x")])`,
		"system not a string":     `Derive([],[],[],[],"",[],[("name","x")])`,
		"whitespace":              `Derive([], [],[],"","",[],[("name","x")])`,
		"unterminated string":     `Derive([],[],[],"","",[],[("name","x`,
		"dangling backslash":      `Derive([],[],[],"","",[],[("name","x\`,
		"no name":                 `Derive([],[],[],"","",[],[("pname",""),("system","x")])`,
		"bad json":                `Derive([],[],[],"","",[],[("__json","{")])`,
		"json without name":       `Derive([],[],[],"","",[],[("__json","{}")])`,
		"json features not list":  `Derive([],[],[],"","",[],[("__json","{\"name\":\"x\",\"requiredSystemFeatures\":\"kvm\"}")])`,
		"input drv not a pair":    `Derive([],[("/nix/store/x.drv")],[],"","",[],[("name","x")])`,
		"nested beyond the bound": `Derive([],[("p",` + strings.Repeat("[", maxDepth+2) + strings.Repeat("]", maxDepth+2) + `)],[],"","",[],[("name","x")])`,
	} {
		if d, err := ParseDerivation([]byte(drv)); err == nil {
			t.Errorf("%s: parsed as %+v, want an error", name, d)
		}
	}
	// Every truncation of a real derivation is an error, never a panic or
	// a half-read environment.
	for i := range len(valid) {
		if d, err := ParseDerivation([]byte(valid[:i])); err == nil {
			t.Fatalf("first %d bytes parsed as %+v, want an error", i, d)
		}
	}
}

func TestStructuredPNameMustBeAString(t *testing.T) {
	d, err := ParseDerivation([]byte(`Derive([],[],[],"","",[],[("__json","{\"name\":\"x-1\",\"pname\":7}")])`))
	if err != nil || d.Name != "x-1" {
		t.Fatalf("got %+v, %v; want the name x-1", d, err)
	}
}

func TestNameFromStorePath(t *testing.T) {
	for path, want := range map[string]string{
		"/nix/store/cv0yyj3disvcmhc3f2jddvlhi7wwn6ln-hello-2.12.drv": "hello-2.12",
		"/nix/store/cv0yyj3disvcmhc3f2jddvlhi7wwn6ln-hello-2.12":     "", // not a .drv
		"/nix/store/cv0yyj3disvcmhc3f2jddvlhi7wwn6le-hello.drv":      "", // e is not nixbase32
		"/nix/store/hello.drv":                             "",
		"/nix/store/cv0yyj3disvcmhc3f2jddvlhi7wwn6ln-.drv": "",
	} {
		if got := nameFromStorePath(path); got != want {
			t.Errorf("%s: got %q, want %q", path, got, want)
		}
	}
}

func TestDescribe(t *testing.T) {
	const base = "4d4i2ijz9w4hfzhfzbzjdd567slr6zdd-tokend-e2e-1.drv"
	data := fixture(t, base)
	tokend := Derivation{Name: "tokend-e2e", Features: []string{"big-parallel"}}

	t.Run("on disk", func(t *testing.T) {
		drv := filepath.Join(t.TempDir(), base)
		os.WriteFile(drv, data, 0o444)
		got, err := Describe(drv, drv+".chroot")
		if err != nil || !reflect.DeepEqual(got, tokend) {
			t.Fatalf("got %+v, %v; want %+v", got, err, tokend)
		}
	})

	// store = local?root=DIR: the hook is told /nix/store/..., the file
	// is DIR/nix/store/..., next to the sandbox.
	for _, layout := range []struct{ nix, sandbox string }{{"2.8", ".chroot"}, {"2.34", ".chroot/root"}} {
		t.Run("chroot store, Nix "+layout.nix, func(t *testing.T) {
			store := filepath.Join(t.TempDir(), "nix", "store")
			os.MkdirAll(store, 0o755)
			os.WriteFile(filepath.Join(store, base), data, 0o444)
			got, err := Describe("/nix/store/"+base, filepath.Join(store, base+layout.sandbox))
			if err != nil || !reflect.DeepEqual(got, tokend) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tokend)
			}
		})
	}

	t.Run("a sandbox of another drv is not looked beside", func(t *testing.T) {
		store := t.TempDir()
		other := "cv0yyj3disvcmhc3f2jddvlhi7wwn6ln-other-1.drv"
		os.WriteFile(filepath.Join(store, base), data, 0o444)
		os.WriteFile(filepath.Join(store, other), []byte("garbage"), 0o444)
		got, err := Describe(filepath.Join(t.TempDir(), base), filepath.Join(store, other+".chroot"))
		if err != nil || got.Name != "tokend-e2e-1" || got.Features != nil {
			t.Fatalf("got %+v, %v; want the name from the path", got, err)
		}
	})

	t.Run("absent: the store path's name", func(t *testing.T) {
		got, err := Describe("/nix/store/cv0yyj3disvcmhc3f2jddvlhi7wwn6ln-remote-3.1.drv", t.TempDir())
		if err != nil || !reflect.DeepEqual(got, Derivation{Name: "remote-3.1"}) {
			t.Fatalf("got %+v, %v", got, err)
		}
	})

	t.Run("absent and no store path", func(t *testing.T) {
		if got, err := Describe("/nowhere/x", t.TempDir()); err == nil {
			t.Fatalf("got %+v, want an error", got)
		}
	})

	t.Run("present but bad", func(t *testing.T) {
		drv := filepath.Join(t.TempDir(), base)
		os.WriteFile(drv, data[:len(data)-1], 0o444)
		if got, err := Describe(drv, t.TempDir()); err == nil {
			t.Fatalf("got %+v, want an error", got)
		}
	})

	t.Run("a directory", func(t *testing.T) {
		if got, err := Describe(t.TempDir(), t.TempDir()); err == nil {
			t.Fatalf("got %+v, want an error", got)
		}
	})
}

func FuzzParseDerivation(f *testing.F) {
	entries, err := os.ReadDir(fixtures)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add(fixture(f, e.Name()))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDerivation(data)
		if err == nil && d.Name == "" {
			t.Fatalf("parsed %q without a name", data)
		}
	})
}
