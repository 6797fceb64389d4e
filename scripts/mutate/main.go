// Command mutate runs the curated mutation tests of scripts/mutations.txt:
// it copies the working tree once, then applies each mutation (a unique
// source snippet replaced by a plausible bug) to the copy alone, runs the
// tests of the packages the mutation names, and reports whether a test
// failed ("killed", with the test's name) or all passed ("SURVIVED").
//
// A mutation marked "equivalent: reason" that survives is listed apart and
// left out of the score: no test can tell it from the original.
//
// A snippet that is no longer in its file, or is there more than once, is
// reported as such and counted apart: the code changed under the list, and
// the list needs updating. A mutant that does not compile is reported too
// and not counted.
//
// Usage (from the repository root): scripts/mutate.sh [-run REGEXP] [-list FILE] [-dry]
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

type mutation struct {
	id, file, old, new, why string
	// equivalent, when set, says why no test can kill the mutation: a
	// survivor is then listed apart and left out of the score.
	equivalent string
	pkgs       []string
	line       int
}

func main() {
	listPath := flag.String("list", "scripts/mutations.txt", "the mutation list")
	run := flag.String("run", "", "only mutations whose id matches this regexp")
	timeout := flag.Duration("timeout", 5*time.Minute, "test timeout per mutant")
	dry := flag.Bool("dry", false, "only check that every snippet is found once")
	flag.Parse()
	if err := realMain(*listPath, *run, *timeout, *dry); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		os.Exit(2)
	}
}

func realMain(listPath, run string, timeout time.Duration, dry bool) error {
	muts, err := parse(listPath)
	if err != nil {
		return err
	}
	var only *regexp.Regexp
	if run != "" {
		if only, err = regexp.Compile(run); err != nil {
			return err
		}
	}
	work, err := os.MkdirTemp("", "tokenbroker-mutate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := copyTree(".", work); err != nil {
		return fmt.Errorf("copy the tree: %w", err)
	}
	start := time.Now()
	var killed, survived, notFound, broken, equivalent int
	var survivors, missing, equivalents []string
	for _, m := range muts {
		if only != nil && !only.MatchString(m.id) {
			continue
		}
		path := filepath.Join(work, m.file)
		orig, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("%-40s %-16s %s\n", m.id, "SNIPPET NOT FOUND", "file "+m.file+" missing")
			notFound++
			missing = append(missing, m.id)
			continue
		}
		switch n := bytes.Count(orig, []byte(m.old)); {
		case n == 0:
			fmt.Printf("%-40s %-16s in %s: %q\n", m.id, "SNIPPET NOT FOUND", m.file, m.old)
			notFound++
			missing = append(missing, m.id)
			continue
		case n > 1:
			fmt.Printf("%-40s %-16s %d times in %s: %q\n", m.id, "SNIPPET AMBIGUOUS", n, m.file, m.old)
			notFound++
			missing = append(missing, m.id)
			continue
		}
		if dry {
			fmt.Printf("%-40s found\n", m.id)
			continue
		}
		mutated := bytes.Replace(orig, []byte(m.old), []byte(m.new), 1)
		if err := os.WriteFile(path, mutated, 0o644); err != nil {
			return err
		}
		t0 := time.Now()
		verdict, detail := test(work, m.pkgs, timeout)
		if err := os.WriteFile(path, orig, 0o644); err != nil {
			return err
		}
		switch verdict {
		case "killed":
			killed++
		case "SURVIVED":
			if m.equivalent != "" {
				verdict, detail = "equivalent", m.equivalent
				equivalent++
				equivalents = append(equivalents, m.id)
				break
			}
			survived++
			survivors = append(survivors, m.id)
		default:
			broken++
		}
		fmt.Printf("%-40s %-10s %-60s %5.1fs  %s: %q -> %q\n", m.id, verdict, detail, time.Since(t0).Seconds(), m.file, m.old, m.new)
	}
	total := killed + survived
	score := 0.0
	if total > 0 {
		score = 100 * float64(killed) / float64(total)
	}
	fmt.Printf("\nmutants: %d killed, %d survived, %d equivalent, %d did not compile, %d snippets not found or ambiguous\n",
		killed, survived, equivalent, broken, notFound)
	fmt.Printf("score: %d/%d = %.1f%% (in %v)\n", killed, total, score, time.Since(start).Round(time.Second))
	if len(equivalents) > 0 {
		fmt.Printf("equivalent (survived, left out of the score): %s\n", strings.Join(equivalents, " "))
	}
	if len(survivors) > 0 {
		fmt.Printf("survived: %s\n", strings.Join(survivors, " "))
	}
	if len(missing) > 0 {
		fmt.Printf("snippet not found (update scripts/mutations.txt): %s\n", strings.Join(missing, " "))
	}
	if survived > 0 || notFound > 0 {
		os.RemoveAll(work) // os.Exit skips the deferred removal
		os.Exit(1)
	}
	return nil
}

var failRE = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)

// test runs go test on pkgs in dir and says whether the mutant was killed
// and by which test.
func test(dir string, pkgs []string, timeout time.Duration) (verdict, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	args := append([]string{"test", "-count=1", "-failfast", "-timeout", timeout.String()}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil {
		return "SURVIVED", "all tests passed"
	}
	s := string(out)
	switch {
	case strings.Contains(s, "[build failed]") || strings.Contains(s, "[setup failed]"):
		return "NO BUILD", firstLine(s)
	case strings.Contains(s, "panic: test timed out"):
		return "killed", "timeout"
	}
	if m := failRE.FindAllStringSubmatch(s, -1); len(m) > 0 {
		// The deepest failing test is the most specific name.
		names := []string{}
		seen := map[string]bool{}
		for _, x := range m {
			if !seen[x[1]] {
				seen[x[1]] = true
				names = append(names, x[1])
			}
		}
		return "killed", strings.Join(names, ",")
	}
	if strings.Contains(s, "panic:") || strings.Contains(s, "DATA RACE") {
		return "killed", "panic"
	}
	return "killed", "exit: " + firstLine(s)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// parse reads the list: blocks of "key: value" lines separated by blank
// lines; keys id, file, test (packages), old, new, why, equivalent. "#"
// starts a comment line.
func parse(path string) ([]mutation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mutation
	var cur mutation
	ids := map[string]bool{}
	flush := func() error {
		if cur.id == "" && cur.file == "" && cur.old == "" {
			return nil
		}
		if cur.id == "" || cur.file == "" || cur.old == "" || len(cur.pkgs) == 0 {
			return fmt.Errorf("%s:%d: a mutation needs id, file, test and old", path, cur.line)
		}
		if ids[cur.id] {
			return fmt.Errorf("%s:%d: id %q used twice", path, cur.line, cur.id)
		}
		ids[cur.id] = true
		out = append(out, cur)
		cur = mutation{}
		return nil
	}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			key, val, ok = strings.Cut(line, ":")
		}
		if !ok {
			return nil, fmt.Errorf("%s:%d: want key: value", path, n)
		}
		if cur.line == 0 {
			cur.line = n
		}
		switch key {
		case "id":
			cur.id = val
		case "file":
			cur.file = val
		case "test":
			cur.pkgs = strings.Fields(val)
		case "old":
			cur.old = unescape(val)
		case "new":
			cur.new = unescape(val)
		case "why":
			cur.why = val
		case "equivalent":
			cur.equivalent = val
		default:
			return nil, fmt.Errorf("%s:%d: unknown key %q", path, n, key)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// unescape turns \n and \t in a snippet into a newline and a tab, so that a
// snippet can span lines.
func unescape(s string) string {
	return strings.NewReplacer(`\n`, "\n", `\t`, "\t").Replace(s)
}

// copyTree copies the module (without .git and .tmp) from src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel == ".git" || rel == ".tmp" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, rel), data, info.Mode().Perm()); err != nil {
			return errors.Join(fmt.Errorf("copy %s", rel), err)
		}
		return nil
	})
}
