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
