// Package config loads Myelin's YAML configuration: defaults first, then the
// YAML file (unknown keys fail), then MYELIN_* environment variables, then
// the caller's Validate.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment override. A field's variable is the
// prefix plus its YAML path in upper case joined by "_", for example
// room_server.database_url -> MYELIN_ROOM_SERVER_DATABASE_URL.
const EnvPrefix = "MYELIN"

// ErrInvalid wraps every validation failure.
var ErrInvalid = errors.New("invalid configuration")

// LoadYAML decodes YAML from r into cfg, which already holds the defaults.
// Unknown keys are an error.
func LoadYAML(r io.Reader, cfg any) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

// LoadFile is LoadYAML on a file.
func LoadFile(path string, cfg any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return LoadYAML(f, cfg)
}

// ApplyEnv overrides fields of cfg (a pointer to struct) from environment
// variables looked up with lookup (os.LookupEnv in production). Lists of
// strings take "a,b,c", maps of strings "k=v,k2=v2"; any list or map also
// takes a YAML or JSON value starting with [ or { (lists of objects need
// that form: MYELIN_KEY_SERVER_NOTARIES='[{"server_name": ...}]').
func ApplyEnv(cfg any, lookup func(string) (string, bool)) error {
	return applyEnv(reflect.ValueOf(cfg).Elem(), EnvPrefix, lookup)
}

// EnvNames lists every environment variable ApplyEnv understands for cfg.
func EnvNames(cfg any) []string {
	var names []string
	walk(reflect.ValueOf(cfg).Elem(), EnvPrefix, func(name string, _ reflect.Value) {
		names = append(names, name)
	})
	return names
}

func walk(v reflect.Value, prefix string, leaf func(string, reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name)
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			walk(fv, name, leaf)
			continue
		}
		leaf(name, fv)
	}
}

func applyEnv(v reflect.Value, prefix string, lookup func(string) (string, bool)) error {
	var firstErr error
	walk(v, prefix, func(name string, fv reflect.Value) {
		raw, ok := lookup(name)
		if !ok || firstErr != nil {
			return
		}
		if err := setFromString(fv, raw); err != nil {
			firstErr = fmt.Errorf("%w: %s: %v", ErrInvalid, name, err)
		}
	})
	return firstErr
}

func setFromString(fv reflect.Value, raw string) error {
	if fv.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(raw)
		if err != nil {
			return err
		}
		fv.SetInt(int64(d))
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return err
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return err
		}
		fv.SetFloat(n)
	case reflect.Slice, reflect.Map:
		trimmed := strings.TrimSpace(raw)
		if strings.HasPrefix(trimmed, "[") || strings.HasPrefix(trimmed, "{") {
			return setFromYAML(fv, trimmed)
		}
		switch {
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.String:
			fv.Set(reflect.ValueOf(splitList(raw)))
		case fv.Kind() == reflect.Map && fv.Type().Key().Kind() == reflect.String && fv.Type().Elem().Kind() == reflect.String:
			m := reflect.MakeMap(fv.Type())
			for _, pair := range splitList(raw) {
				k, v, ok := strings.Cut(pair, "=")
				if !ok || strings.TrimSpace(k) == "" {
					return fmt.Errorf("want key=value pairs separated by commas, got %q", pair)
				}
				m.SetMapIndex(reflect.ValueOf(strings.TrimSpace(k)).Convert(fv.Type().Key()),
					reflect.ValueOf(strings.TrimSpace(v)).Convert(fv.Type().Elem()))
			}
			fv.Set(m)
		default:
			return fmt.Errorf("%s takes a YAML (or JSON) value, e.g. [{...}]", fv.Type())
		}
	default:
		return fmt.Errorf("unsupported type %s", fv.Type())
	}
	return nil
}

// splitList splits "a, b,,c" into its non-empty, trimmed items.
func splitList(raw string) []string {
	var parts []string
	for _, p := range strings.Split(raw, ",") {
		if p = strings.TrimSpace(p); p != "" {
			parts = append(parts, p)
		}
	}
	return parts
}

// setFromYAML decodes a YAML (or JSON, a subset of YAML) value into a list
// or map field, replacing what it held. Unknown keys fail, as in the file.
func setFromYAML(fv reflect.Value, raw string) error {
	ptr := reflect.New(fv.Type())
	dec := yaml.NewDecoder(strings.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(ptr.Interface()); err != nil {
		return err
	}
	fv.Set(ptr.Elem())
	return nil
}

// Marshal renders cfg as YAML (for `myelin generate-config`).
func Marshal(cfg any) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(cfg); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
