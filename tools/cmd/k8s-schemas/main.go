// Command k8s-schemas writes kubeconform-compatible JSON schemas for the
// built-in Kubernetes kinds, offline.
//
// kubeconform normally downloads its schemas (generated from the Kubernetes
// OpenAPI document). This machine reaches no such host, so the schemas are
// generated here from the same source the Kubernetes OpenAPI document is
// built from: the OpenAPI definitions compiled into k8s.io/kubernetes
// (pkg/generated/openapi), with the GroupVersionKind of each type taken from
// client-go's scheme. The output mirrors the "standalone-strict" layout of
// the published schema sets: every $ref is inlined, every object that lists
// its properties rejects unknown ones, and optional fields may be null.
//
// Usage:
//
//	k8s-schemas -out bin/kubernetes-schemas -kubernetes-version 1.36.3
//
// writes bin/kubernetes-schemas/v1.36.3-standalone-strict/<kind>-<group>-<version>.json,
// which kubeconform finds with
//
//	-kubernetes-version 1.36.3 -schema-location 'bin/kubernetes-schemas/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json'
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"sort"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kubernetes/pkg/generated/openapi"
)

const refPrefix = "#/definitions/"

// quantityModel is resource.Quantity, which accepts "100m" as well as 1.
const quantityModel = "io.k8s.apimachinery.pkg.api.resource.Quantity"

func main() {
	out := flag.String("out", "bin/kubernetes-schemas", "output directory")
	version := flag.String("kubernetes-version", "", "Kubernetes version the schemas are for (must match the compiled-in k8s.io/api)")
	flag.Parse()
	if err := run(*out, *version); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-schemas:", err)
		os.Exit(1)
	}
}

func run(out, version string) error {
	compiled, err := compiledKubernetesVersion()
	if err != nil {
		return err
	}
	if version == "" {
		version = compiled
	}
	if version != compiled {
		return fmt.Errorf("-kubernetes-version %s, but the compiled-in API types are Kubernetes %s: bump tools/go.mod or the Makefile", version, compiled)
	}
	dir := filepath.Join(out, "v"+version+"-standalone-strict")
	stamp := filepath.Join(dir, ".complete")
	if _, err := os.Stat(stamp); err == nil {
		return nil // already generated for this version
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientscheme.AddToScheme, apiextensionsv1.AddToScheme, apiregistrationv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return err
		}
	}
	defs := openapi.GetOpenAPIDefinitions(func(name string) spec.Ref {
		return spec.MustCreateRef(refPrefix + name)
	})
	g := &generator{defs: defs}

	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	written := map[string]schema.GroupVersionKind{}
	gvks := sortedKinds(scheme)
	for _, gvk := range gvks {
		t := scheme.AllKnownTypes()[gvk]
		if strings.HasPrefix(t.PkgPath(), "k8s.io/apimachinery/") {
			continue // meta types (Status, *Options, WatchEvent) every group registers
		}
		model, ok := modelName(t)
		if !ok {
			return fmt.Errorf("%s (%s): no OpenAPI model name", gvk, t)
		}
		if _, ok := defs[model]; !ok {
			return fmt.Errorf("%s: no OpenAPI definition %s", gvk, model)
		}
		name := fileName(gvk)
		if prev, dup := written[name]; dup {
			return fmt.Errorf("%s and %s both map to %s", prev, gvk, name)
		}
		written[name] = gvk
		s, err := g.kind(model, gvk)
		if err != nil {
			return fmt.Errorf("%s: %w", gvk, err)
		}
		data, err := json.Marshal(s)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(stamp, []byte(fmt.Sprintf("%d schemas\n", len(written))), 0o644); err != nil {
		return err
	}
	fmt.Printf("k8s-schemas: wrote %d schemas for Kubernetes %s to %s\n", len(written), version, dir)
	return nil
}

// compiledKubernetesVersion maps the k8s.io/api module version (v0.X.Y) to
// the Kubernetes release (1.X.Y).
func compiledKubernetesVersion() (string, error) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", errors.New("no build info")
	}
	for _, m := range bi.Deps {
		if m.Path != "k8s.io/api" {
			continue
		}
		v := m.Version
		if m.Replace != nil {
			v = m.Replace.Version
		}
		if !strings.HasPrefix(v, "v0.") {
			return "", fmt.Errorf("unexpected k8s.io/api version %q", v)
		}
		return "1." + strings.TrimPrefix(v, "v0."), nil
	}
	return "", errors.New("k8s.io/api not in build info")
}

func sortedKinds(s *runtime.Scheme) []schema.GroupVersionKind {
	var out []schema.GroupVersionKind
	for gvk := range s.AllKnownTypes() {
		if gvk.Version == runtime.APIVersionInternal {
			continue
		}
		out = append(out, gvk)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func modelName(t reflect.Type) (string, bool) {
	type namer interface{ OpenAPIModelName() string }
	if n, ok := reflect.New(t).Interface().(namer); ok {
		return n.OpenAPIModelName(), true
	}
	if n, ok := reflect.New(t).Elem().Interface().(namer); ok {
		return n.OpenAPIModelName(), true
	}
	return "", false
}

// fileName follows kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}:
// lower-case kind, then the first label of the group, then the version.
func fileName(gvk schema.GroupVersionKind) string {
	suffix := ""
	if gvk.Group != "" {
		suffix = "-" + strings.ToLower(strings.Split(gvk.Group, ".")[0])
	}
	return strings.ToLower(gvk.Kind) + suffix + "-" + strings.ToLower(gvk.Version) + ".json"
}

type generator struct {
	defs map[string]common.OpenAPIDefinition
}

// kind is the standalone schema of one top-level kind.
func (g *generator) kind(model string, gvk schema.GroupVersionKind) (map[string]any, error) {
	s, err := g.definition(model, nil)
	if err != nil {
		return nil, err
	}
	s["$schema"] = "http://json-schema.org/schema#"
	s["x-kubernetes-group-version-kind"] = []map[string]string{{
		"group": gvk.Group, "version": gvk.Version, "kind": gvk.Kind,
	}}
	// apiVersion and kind are what the object is: pin them.
	if props, ok := s["properties"].(map[string]any); ok {
		props["apiVersion"] = map[string]any{"type": "string", "enum": []any{gvk.GroupVersion().String()}}
		props["kind"] = map[string]any{"type": "string", "enum": []any{gvk.Kind}}
	}
	return s, nil
}

func (g *generator) definition(model string, stack []string) (map[string]any, error) {
	for _, m := range stack {
		if m == model {
			// Recursive types (JSONSchemaProps) accept anything below the
			// first repetition.
			return map[string]any{}, nil
		}
	}
	if model == quantityModel {
		return map[string]any{"oneOf": []any{
			map[string]any{"type": "string"}, map[string]any{"type": "number"},
		}}, nil
	}
	def, ok := g.defs[model]
	if !ok {
		return nil, fmt.Errorf("unknown definition %s", model)
	}
	return g.convert(def.Schema, append(stack, model))
}

// convert turns an OpenAPI v2 schema into a standalone JSON schema.
func (g *generator) convert(s spec.Schema, stack []string) (map[string]any, error) {
	if ref := s.Ref.String(); ref != "" {
		if !strings.HasPrefix(ref, refPrefix) {
			return nil, fmt.Errorf("unsupported $ref %q", ref)
		}
		return g.definition(strings.TrimPrefix(ref, refPrefix), stack)
	}
	out := map[string]any{}
	if s.Format == "int-or-string" {
		out["oneOf"] = []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}
		return out, nil
	}
	if len(s.Type) > 0 {
		if len(s.Type) == 1 {
			out["type"] = s.Type[0]
		} else {
			out["type"] = []string(s.Type)
		}
	}
	if len(s.Enum) > 0 {
		out["enum"] = s.Enum
	}
	for _, kw := range []struct {
		name string
		list []spec.Schema
	}{{"oneOf", s.OneOf}, {"anyOf", s.AnyOf}, {"allOf", s.AllOf}} {
		if len(kw.list) == 0 {
			continue
		}
		var subs []any
		for _, sub := range kw.list {
			c, err := g.convert(sub, stack)
			if err != nil {
				return nil, err
			}
			subs = append(subs, c)
		}
		out[kw.name] = subs
	}
	if s.Items != nil {
		if s.Items.Schema == nil {
			return nil, errors.New("tuple items are not supported")
		}
		c, err := g.convert(*s.Items.Schema, stack)
		if err != nil {
			return nil, err
		}
		out["items"] = c
	}
	if len(s.Properties) > 0 {
		required := map[string]bool{}
		for _, r := range s.Required {
			required[r] = true
		}
		props := map[string]any{}
		for name, p := range s.Properties {
			c, err := g.convert(p, stack)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if !required[name] {
				c = nullable(c)
			}
			props[name] = c
		}
		out["properties"] = props
		if len(s.Required) > 0 {
			out["required"] = s.Required
		}
	}
	preserve, _ := s.Extensions.GetBool("x-kubernetes-preserve-unknown-fields")
	switch {
	case s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil:
		c, err := g.convert(*s.AdditionalProperties.Schema, stack)
		if err != nil {
			return nil, err
		}
		out["additionalProperties"] = c
	case s.AdditionalProperties != nil:
		out["additionalProperties"] = s.AdditionalProperties.Allows
	case len(s.Properties) > 0 && !preserve:
		out["additionalProperties"] = false // strict
	}
	return out, nil
}

// nullable lets an optional field be written as null (as `key:` with no
// value in YAML), which the API server accepts.
func nullable(s map[string]any) map[string]any {
	switch t := s["type"].(type) {
	case string:
		s["type"] = []string{t, "null"}
	case []string:
		s["type"] = append(t, "null")
	default:
		if _, ok := s["oneOf"]; ok {
			s["oneOf"] = append(s["oneOf"].([]any), map[string]any{"type": "null"})
		}
	}
	if e, ok := s["enum"].([]any); ok {
		s["enum"] = append(e, nil)
	}
	return s
}
