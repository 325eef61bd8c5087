// Command k8s-check checks rendered Kubernetes manifests for what a schema
// cannot see. kubeconform validates each object alone; this decodes every
// object strictly into the client-go API types and checks the objects
// against each other:
//
//   - each Deployment's selector matches its own pod labels;
//   - each Service selects at least one rendered Deployment, and its named
//     target ports exist in those pods;
//   - probes use declared container ports;
//   - each HorizontalPodAutoscaler scales a rendered Deployment, which then
//     leaves spec.replicas to it;
//   - every ConfigMap and Secret a pod uses is rendered, or named with
//     -external-secret (secrets the platform team creates);
//   - the Myelin processes (containers whose image is named myelin) are
//     wired: with the config file the ConfigMap mounts plus the MYELIN_*
//     environment, package topology checks targets, listen addresses,
//     database/NATS settings and that every services.* address resolves,
//     through a Service, to a pod running that service on that port (for
//     gRPC, a headless Service: see pkg/rpc.Dial).
//
// Usage: k8s-check [-external-secret name]... manifests.yaml...
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	clientscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/myelin-chat/myelin/tools/internal/topology"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var external listFlag
	flag.Var(&external, "external-secret", "a Secret the manifests use but do not contain (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: k8s-check [-external-secret name]... manifests.yaml...")
		os.Exit(2)
	}
	var errs []error
	for _, f := range flag.Args() {
		n, err := checkFile(f, external)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:\n%w", f, err))
			continue
		}
		fmt.Printf("k8s-check: %s: %d objects, cross-references and Myelin wiring OK\n", f, n)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-check:", err)
		os.Exit(1)
	}
}

type manifests struct {
	namespace    string
	deployments  []*appsv1.Deployment
	services     []*corev1.Service
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	objectsCount int
}

func checkFile(file string, external []string) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	m, err := decode(f)
	if m == nil {
		return 0, err
	}
	errs := append(m.check(external), err)
	errs = slices.DeleteFunc(errs, func(e error) bool { return e == nil })
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return m.objectsCount, errors.Join(errs...)
}

// decode reads every document strictly (unknown or duplicate fields fail).
func decode(r io.Reader) (*manifests, error) {
	codecs := serializer.NewCodecFactory(clientscheme.Scheme, serializer.EnableStrict)
	dec := codecs.UniversalDeserializer()
	m := &manifests{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	yr := k8syaml.NewYAMLReader(bufio.NewReader(r))
	var errs []error
	for {
		doc, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("decode: %w", err))
			if !runtime.IsStrictDecodingError(err) || obj == nil {
				continue
			}
			// Strict errors come with the decoded object: check it too.
		}
		m.objectsCount++
		meta, _ := obj.(metav1.Object)
		if meta != nil && meta.GetNamespace() != "" {
			m.namespace = meta.GetNamespace()
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, o)
		case *corev1.Service:
			m.services = append(m.services, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			m.hpas = append(m.hpas, o)
		case *corev1.ConfigMap:
			m.configMaps[o.Name] = o
		case *corev1.Secret:
			m.secrets[o.Name] = o
		}
	}
	if m.namespace == "" {
		m.namespace = "default"
	}
	return m, errors.Join(errs...)
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func (m *manifests) check(external []string) []error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	for _, d := range m.deployments {
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			fail("Deployment %s: selector: %v", d.Name, err)
		} else if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			fail("Deployment %s: selector does not match its pod labels", d.Name)
		}
		pod := d.Spec.Template.Spec
		for _, c := range pod.Containers {
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
				if p == nil {
					continue
				}
				var port *intstr.IntOrString
				switch {
				case p.TCPSocket != nil:
					port = &p.TCPSocket.Port
				case p.HTTPGet != nil:
					port = &p.HTTPGet.Port
				case p.GRPC != nil:
					port = &intstr.IntOrString{IntVal: p.GRPC.Port}
				}
				if port != nil && containerPort(c, *port) == 0 {
					fail("Deployment %s: container %s: probe port %s is not a container port", d.Name, c.Name, port.String())
				}
			}
		}
		for _, name := range configMapsUsed(pod) {
			if m.configMaps[name] == nil {
				fail("Deployment %s: uses ConfigMap %s, which is not rendered", d.Name, name)
			}
		}
		for _, name := range secretsUsed(pod) {
			if m.secrets[name] == nil && !slices.Contains(external, name) {
				fail("Deployment %s: uses Secret %s, which is neither rendered nor declared external", d.Name, name)
			}
		}
	}

	var endpoints []topology.Endpoint
	for _, s := range m.services {
		var matched []*appsv1.Deployment
		for _, d := range m.deployments {
			if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				matched = append(matched, d)
			}
		}
		if len(matched) == 0 {
			fail("Service %s: selects no rendered Deployment", s.Name)
		}
		for _, sp := range s.Spec.Ports {
			tp := sp.TargetPort
			if tp.Type == intstr.Int && tp.IntVal == 0 {
				tp = intstr.FromInt32(sp.Port)
			}
			for _, d := range matched {
				n := 0
				for _, c := range d.Spec.Template.Spec.Containers {
					if p := containerPort(c, tp); p != 0 {
						n = p
					}
				}
				if n == 0 {
					fail("Service %s: port %s: target port %s is not a port of Deployment %s", s.Name, sp.Name, tp.String(), d.Name)
					continue
				}
				for _, host := range []string{s.Name, s.Name + "." + m.namespace, s.Name + "." + m.namespace + ".svc", s.Name + "." + m.namespace + ".svc.cluster.local"} {
					endpoints = append(endpoints, topology.Endpoint{Host: host, Port: int(sp.Port), Process: d.Name, TargetPort: n,
						OneAddress: s.Spec.ClusterIP != corev1.ClusterIPNone})
				}
			}
		}
	}

	for _, h := range m.hpas {
		ref := h.Spec.ScaleTargetRef
		idx := slices.IndexFunc(m.deployments, func(d *appsv1.Deployment) bool { return d.Name == ref.Name })
		if ref.Kind != "Deployment" || idx < 0 {
			fail("HorizontalPodAutoscaler %s: scales %s %s, which is not a rendered Deployment", h.Name, ref.Kind, ref.Name)
		} else if m.deployments[idx].Spec.Replicas != nil {
			fail("HorizontalPodAutoscaler %s: Deployment %s also sets spec.replicas; every upgrade would reset the autoscaler's count", h.Name, ref.Name)
		}
	}

	var procs []topology.Process
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			if !isMyelin(c.Image) {
				continue
			}
			if len(c.Command) > 0 {
				fail("Deployment %s: container %s overrides the image's entrypoint", d.Name, c.Name)
			}
			settings, err := m.settings(d, c)
			if err != nil {
				fail("Deployment %s: %v", d.Name, err)
			}
			procs = append(procs, topology.Process{Name: d.Name, Args: c.Args, Settings: settings})
		}
	}
	if len(procs) == 0 {
		fail("no container uses the myelin image")
	}
	errs = append(errs, topology.Check(procs, endpoints)...)
	return errs
}

// settings is the container's effective Myelin configuration: the -config
// file (from a mounted ConfigMap), then MYELIN_* variables.
func (m *manifests) settings(d *appsv1.Deployment, c corev1.Container) (topology.Settings, error) {
	settings := topology.Settings{}
	var errs []error
	if file := argValue(c.Args, "config"); file != "" {
		data, err := m.mountedFile(d.Spec.Template.Spec, c, file)
		if err != nil {
			errs = append(errs, fmt.Errorf("-config %s: %w", file, err))
		} else {
			var doc any
			if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
				errs = append(errs, fmt.Errorf("-config %s: %w", file, err))
			}
			topology.Flatten("", doc, settings)
		}
	}
	env := func(name, value string) {
		key, err := topology.KeyOfEnv(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", c.Name, err))
			return
		}
		settings[key] = value
	}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil && m.configMaps[ef.ConfigMapRef.Name] != nil {
			for k, v := range m.configMaps[ef.ConfigMapRef.Name].Data {
				if strings.HasPrefix(ef.Prefix+k, "MYELIN_") {
					env(ef.Prefix+k, v)
				}
			}
		}
	}
	for _, e := range c.Env {
		if !strings.HasPrefix(e.Name, "MYELIN_") {
			continue
		}
		switch {
		case e.ValueFrom == nil:
			env(e.Name, e.Value)
		case e.ValueFrom.SecretKeyRef != nil:
			env(e.Name, topology.Secret)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			if cm := m.configMaps[ref.Name]; cm != nil {
				env(e.Name, cm.Data[ref.Key])
			}
		default:
			env(e.Name, "<from field>")
		}
	}
	return settings, errors.Join(errs...)
}

// mountedFile finds the ConfigMap key mounted at file.
func (m *manifests) mountedFile(pod corev1.PodSpec, c corev1.Container, file string) (string, error) {
	for _, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, file)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		if vm.SubPath != "" {
			if rel != "." {
				continue
			}
			rel = vm.SubPath
		}
		for _, v := range pod.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil {
				continue
			}
			cm := m.configMaps[v.ConfigMap.Name]
			if cm == nil {
				return "", fmt.Errorf("ConfigMap %s is not rendered", v.ConfigMap.Name)
			}
			key := rel
			for _, it := range v.ConfigMap.Items {
				if it.Path == rel {
					key = it.Key
				}
			}
			data, ok := cm.Data[key]
			if !ok {
				return "", fmt.Errorf("ConfigMap %s has no key %s", cm.Name, key)
			}
			return data, nil
		}
	}
	return "", errors.New("no ConfigMap volume is mounted there")
}

func argValue(args []string, name string) string {
	for i, a := range args {
		switch {
		case a == "-"+name || a == "--"+name:
			if i+1 < len(args) {
				return args[i+1]
			}
		case strings.HasPrefix(a, "-"+name+"="), strings.HasPrefix(a, "--"+name+"="):
			return a[strings.Index(a, "=")+1:]
		}
	}
	return ""
}

func containerPort(c corev1.Container, p intstr.IntOrString) int {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return int(cp.ContainerPort)
		}
	}
	return 0
}

func configMapsUsed(pod corev1.PodSpec) []string {
	var out []string
	for _, v := range pod.Volumes {
		if v.ConfigMap != nil && (v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional) {
			out = append(out, v.ConfigMap.Name)
		}
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil && (e.ValueFrom.ConfigMapKeyRef.Optional == nil || !*e.ValueFrom.ConfigMapKeyRef.Optional) {
				out = append(out, e.ValueFrom.ConfigMapKeyRef.Name)
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef != nil {
				out = append(out, ef.ConfigMapRef.Name)
			}
		}
	}
	return out
}

func secretsUsed(pod corev1.PodSpec) []string {
	var out []string
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			out = append(out, v.Secret.SecretName)
		}
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				out = append(out, e.ValueFrom.SecretKeyRef.Name)
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.SecretRef != nil {
				out = append(out, ef.SecretRef.Name)
			}
		}
	}
	return out
}

func isMyelin(image string) bool {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return path.Base(image) == "myelin"
}
