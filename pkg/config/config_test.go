package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type inner struct {
	URL     string        `yaml:"url"`
	Timeout time.Duration `yaml:"timeout"`
	List    []string      `yaml:"list"`
}

type outer struct {
	Name  string `yaml:"name"`
	Open  bool   `yaml:"open"`
	Inner inner  `yaml:"room_server"`
}

func TestLoadOrder(t *testing.T) {
	cfg := outer{Name: "default", Inner: inner{Timeout: time.Second}}
	if err := LoadYAML(strings.NewReader("name: fromyaml\nroom_server:\n  url: postgres://a\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MYELIN_ROOM_SERVER_URL":     "postgres://b",
		"MYELIN_ROOM_SERVER_TIMEOUT": "3s",
		"MYELIN_OPEN":                "true",
		"MYELIN_ROOM_SERVER_LIST":    "a, b",
	}
	if err := ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "fromyaml" || cfg.Inner.URL != "postgres://b" || cfg.Inner.Timeout != 3*time.Second || !cfg.Open {
		t.Fatalf("unexpected config %+v", cfg)
	}
	if len(cfg.Inner.List) != 2 || cfg.Inner.List[1] != "b" {
		t.Fatalf("list = %v", cfg.Inner.List)
	}
}

func TestUnknownKeyFails(t *testing.T) {
	var cfg outer
	err := LoadYAML(strings.NewReader("nmae: typo\n"), &cfg)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", err)
	}
}

func TestBadEnvValue(t *testing.T) {
	var cfg outer
	err := ApplyEnv(&cfg, func(k string) (string, bool) {
		if k == "MYELIN_OPEN" {
			return "maybe", true
		}
		return "", false
	})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", err)
	}
}

func TestEnvNames(t *testing.T) {
	names := strings.Join(EnvNames(&outer{}), " ")
	for _, want := range []string{"MYELIN_NAME", "MYELIN_ROOM_SERVER_URL", "MYELIN_ROOM_SERVER_TIMEOUT"} {
		if !strings.Contains(names, want) {
			t.Errorf("missing %s in %s", want, names)
		}
	}
}

type structured struct {
	Map   map[string]string `yaml:"map"`
	Items []item            `yaml:"items"`
	List  []string          `yaml:"list"`
}

type item struct {
	Name string            `yaml:"name"`
	Keys map[string]string `yaml:"keys"`
}

// Maps and lists of objects have environment overrides too: maps as
// k=v pairs, and anything as a YAML/JSON value.
func TestEnvStructuredValues(t *testing.T) {
	cases := []struct {
		env   map[string]string
		check func(structured) bool
	}{
		{map[string]string{"MYELIN_MAP": "a.test=127.0.0.1:1, b.test = [::1]:2"}, func(c structured) bool {
			return len(c.Map) == 2 && c.Map["a.test"] == "127.0.0.1:1" && c.Map["b.test"] == "[::1]:2"
		}},
		{map[string]string{"MYELIN_MAP": `{"a.test": "h:1"}`}, func(c structured) bool { return len(c.Map) == 1 && c.Map["a.test"] == "h:1" }},
		{map[string]string{"MYELIN_ITEMS": `[{"name": "n", "keys": {"ed25519:a": "k"}}]`}, func(c structured) bool {
			return len(c.Items) == 1 && c.Items[0].Name == "n" && c.Items[0].Keys["ed25519:a"] == "k"
		}},
		{map[string]string{"MYELIN_LIST": `["x,y", "z"]`}, func(c structured) bool { return len(c.List) == 2 && c.List[0] == "x,y" }},
	}
	for _, c := range cases {
		cfg := structured{Map: map[string]string{"old": "x"}}
		if err := ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := c.env[k]; return v, ok }); err != nil {
			t.Fatalf("%v: %v", c.env, err)
		}
		if !c.check(cfg) {
			t.Errorf("%v: got %+v", c.env, cfg)
		}
	}
	for _, bad := range []map[string]string{
		{"MYELIN_MAP": "novalue"},
		{"MYELIN_ITEMS": "n"},
		{"MYELIN_ITEMS": `[{"nmae": "typo"}]`},
		{"MYELIN_MAP": `{"a": [1`},
	} {
		var cfg structured
		if err := ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := bad[k]; return v, ok }); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v: want ErrInvalid, got %v", bad, err)
		}
	}
}
