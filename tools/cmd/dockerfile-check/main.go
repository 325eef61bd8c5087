// Command dockerfile-check checks the Dockerfile and .dockerignore without
// a Docker engine:
//
//   - BuildKit's own Dockerfile frontend parses the file and runs every build
//     check `docker build --check` runs (base images are not pulled: their
//     configuration is taken as empty);
//   - the image is multi-stage, runs as a non-root user, starts myelin and
//     exposes 8008 and 9000;
//   - .dockerignore keeps in the build context everything the build needs:
//     go.work, go.work.sum, every workspace module, cmd/myelin and the files
//     COPY takes from the context.
//
// Usage: dockerfile-check [-context dir] [Dockerfile]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/buildkit/solver/pb"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/mod/modfile"
	"gopkg.in/yaml.v3"

	"github.com/myelin-chat/myelin/tools/internal/topology"
)

func main() {
	contextDir := flag.String("context", ".", "build context")
	flag.Parse()
	file := "Dockerfile"
	if flag.NArg() > 0 {
		file = flag.Arg(0)
	}
	if err := check(*contextDir, file); err != nil {
		fmt.Fprintln(os.Stderr, "dockerfile-check:", err)
		os.Exit(1)
	}
	fmt.Printf("dockerfile-check: %s passes the BuildKit build checks; .dockerignore keeps the workspace\n", file)
}

// offlineResolver answers base-image lookups with an empty config.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	return ref, digest.FromString(ref), []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"},"config":{}}`), nil
}

func check(contextDir, file string) error {
	dt, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var errs []error

	// 1. The frontend's build checks (docker build --check).
	sm := llb.NewSourceMap(nil, filepath.Base(file), "Dockerfile", dt)
	sm.Definition = &llb.Definition{}
	caps := pb.Caps.CapSet(pb.Caps.All())
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
		SourceMap:    sm,
		MetaResolver: offlineResolver{},
		LLBCaps:      &caps,
	})
	if err != nil {
		return err
	}
	if res.Error != nil {
		errs = append(errs, fmt.Errorf("build error: %s", res.Error.Message))
	}
	for _, w := range res.Warnings {
		line := int32(0)
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = w.Location.Ranges[0].Start.Line
		}
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", file, line, w.RuleName, w.Detail))
	}

	// 2. What the image must be.
	ast, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return err
	}
	stages, metaArgs, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		return err
	}
	args := map[string]string{}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				args[kv.Key] = *kv.Value
			}
		}
	}
	lex := shell.NewLex(parser.DefaultEscapeToken)
	expand := func(s string) string {
		r, err := lex.ProcessWordWithMatches(s, shell.EnvsFromSlice(envList(args)))
		if err != nil {
			return s
		}
		return r.Result
	}
	if len(stages) < 2 {
		errs = append(errs, errors.New("want a multi-stage build (Go build stage, small runtime stage)"))
	}
	if len(stages) > 0 {
		if base := expand(stages[0].BaseName); !strings.HasPrefix(base, "golang:") {
			errs = append(errs, fmt.Errorf("build stage is %s, want golang:*", base))
		}
		final := stages[len(stages)-1]
		base := expand(final.BaseName)
		if !strings.Contains(base, "distroless") && !strings.Contains(base, "slim") {
			errs = append(errs, fmt.Errorf("runtime stage is %s, want distroless or debian-slim", base))
		}
		var user string
		var entrypoint, cmd []string
		var exposed []string
		copied := map[string]string{} // image path -> context path
		for _, c := range final.Commands {
			switch c := c.(type) {
			case *instructions.UserCommand:
				user = c.User
			case *instructions.EntrypointCommand:
				entrypoint = c.CmdLine
			case *instructions.CmdCommand:
				cmd = c.CmdLine
			case *instructions.ExposeCommand:
				exposed = append(exposed, c.Ports...)
			case *instructions.CopyCommand:
				if c.From != "" {
					continue
				}
				for _, src := range c.SourcePaths {
					if err := inContext(contextDir, src, true); err != nil {
						errs = append(errs, fmt.Errorf("COPY %s: %w", src, err))
					}
					dest := c.DestPath
					if strings.HasSuffix(dest, "/") {
						dest += filepath.Base(src)
					}
					copied[dest] = src
				}
			}
		}
		if u := strings.Split(user, ":")[0]; u == "" || u == "root" || u == "0" {
			errs = append(errs, fmt.Errorf("runtime stage runs as %q, want a non-root USER", user))
		}
		if len(entrypoint) == 0 || filepath.Base(entrypoint[0]) != "myelin" {
			errs = append(errs, fmt.Errorf("ENTRYPOINT is %q, want the myelin binary", entrypoint))
		}
		// The default configuration CMD passes must load: known keys and
		// listen addresses reachable from outside the container.
		if i := slices.Index(cmd, "-config"); i >= 0 && i+1 < len(cmd) {
			src, ok := copied[cmd[i+1]]
			if !ok {
				errs = append(errs, fmt.Errorf("CMD -config %s: no COPY puts a file there", cmd[i+1]))
			} else if err := checkConfig(filepath.Join(contextDir, src)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", src, err))
			}
		}
		for _, p := range []string{"8008", "9000"} {
			if !slices.ContainsFunc(exposed, func(e string) bool { return strings.Split(e, "/")[0] == p }) {
				errs = append(errs, fmt.Errorf("port %s is not EXPOSEd", p))
			}
		}
	}

	// 3. The build context keeps the workspace.
	need := []string{"go.work", "go.work.sum", "cmd/myelin/main.go"}
	work, err := os.ReadFile(filepath.Join(contextDir, "go.work"))
	if err != nil {
		return err
	}
	wf, err := modfile.ParseWork("go.work", work, nil)
	if err != nil {
		return err
	}
	for _, u := range wf.Use {
		dir := filepath.Clean(u.Path)
		need = append(need, filepath.Join(dir, "go.mod"), filepath.Join(dir, "go.sum"), filepath.Join(dir, "x.go"))
	}
	for _, p := range need {
		if err := inContext(contextDir, p, false); err != nil {
			errs = append(errs, fmt.Errorf("the Go build needs %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// inContext reports whether .dockerignore keeps path in the build context;
// mustExist also wants the file to be there.
func inContext(contextDir, path string, mustExist bool) error {
	path = filepath.Clean(strings.TrimPrefix(path, "/"))
	if mustExist {
		if _, err := os.Stat(filepath.Join(contextDir, path)); err != nil {
			return err
		}
	}
	f, err := os.Open(filepath.Join(contextDir, ".dockerignore"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		return err
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return err
	}
	excluded, err := pm.MatchesOrParentMatches(filepath.ToSlash(path))
	if err != nil {
		return err
	}
	if excluded {
		return errors.New("excluded by .dockerignore")
	}
	return nil
}

func checkConfig(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return err
	}
	settings := topology.Settings{}
	topology.Flatten("", doc, settings)
	var errs []error
	for k := range settings {
		if err := topology.CheckKey(k); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range []string{"http.listen", "grpc.listen"} {
		if err := topology.CheckListen(settings[k]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

func envList(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}
