package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// runKeys runs `keys status` and `keys rotate`.
func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "status" && args[0] != "rotate") {
		return errors.New("keys: want `keys status --config FILE` or `keys rotate --config FILE --client NAME [--dry-run] [--force]`")
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML config file (required)")
	client := fs.String("client", "", "client to rotate (rotate: required)")
	dryRun := fs.Bool("dry-run", false, "rotate: say what would be done, change nothing")
	force := fs.Bool("force", false, "rotate: start a new rotation even within the grace period after the last one")
	timeout := fs.Duration("timeout", 20*time.Minute, "give up after this long")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *configPath == "" {
		return fmt.Errorf("keys %s: --config is required", args[0])
	}
	cfg, err := daemon.Load(*configPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rot, err := daemon.OpenRotation(ctx, cfg, filepath.Dir(*configPath), nil)
	if err != nil {
		return fmt.Errorf("keys %s: %w", args[0], err)
	}
	defer rot.Close()
	if args[0] == "status" {
		return keysStatus(ctx, rot, stdout)
	}
	if *client == "" {
		return errors.New("keys rotate: --client is required")
	}
	rep, err := rot.Rotate(ctx, *client, daemon.RotateOptions{DryRun: *dryRun, Force: *force})
	if rep.Outcome != "" { // no pass ran when it was refused before one
		printReport(stdout, *client, rep, rot.Grace(cfg, *client))
	}
	if err != nil {
		return fmt.Errorf("keys rotate: %w", err)
	}
	return nil
}

func keysStatus(ctx context.Context, rot *daemon.Rotation, stdout io.Writer) error {
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	now := time.Now()
	var failed []string
	for _, name := range rot.Clients() {
		st, err := rot.Status(ctx, name)
		if err != nil {
			return fmt.Errorf("keys status: %w", err)
		}
		fmt.Fprintf(tw, "client %s (client_id %s)\n", st.Client, st.ClientID)
		fmt.Fprintf(tw, "  active\t%s\n", st.Active)
		if st.Next != "" {
			fmt.Fprintf(tw, "  next\t%s (rotation at step %s)\n", st.Next, st.Step)
		} else {
			fmt.Fprintf(tw, "  next\t-\n")
		}
		fmt.Fprintf(tw, "  last rotation\t%s\n", when(st.LastRotation, now))
		fmt.Fprintf(tw, "  next due\t%s\n", when(st.Due, now))
		if st.LastOutcome != "" {
			fmt.Fprintf(tw, "  last pass\t%s at %s\n", st.LastOutcome, when(st.LastAttempt, now))
		}
		if st.LastError != "" && len(st.Blocking) > 0 && st.LastOutcome == rotation.OutcomeWaiting {
			fmt.Fprintf(tw, "  waiting\t%s\n", st.LastError)
		} else if st.LastError != "" {
			fmt.Fprintf(tw, "  last error\t%s\n", st.LastError)
		}
		// A rotation waiting for a replica is no failure (its own alert covers it).
		if (st.LastError != "" && st.LastOutcome != rotation.OutcomeWaiting) || st.StateLost != "" {
			failed = append(failed, name)
		}
		if st.StateLost != "" {
			fmt.Fprintf(tw, "  state\tLOST: %s\n", st.StateLost)
		}
		for _, b := range st.Blocking {
			fmt.Fprintf(tw, "  blocking\t%s\tstill signs with %s (ack expires %s)\n", b.Replica, b.KID, when(b.Expires, now))
		}
		for _, r := range slices.Sorted(maps.Keys(st.Replicas)) {
			a := st.Replicas[r]
			fmt.Fprintf(tw, "  replica\t%s\tsigns with %s (acked %s)\n", r, a.KID, when(a.At, now))
		}
		if st.AcksError != "" {
			fmt.Fprintf(tw, "  replicas\tcannot be read: %s\n", st.AcksError)
		}
		if st.RegistryError != "" {
			fmt.Fprintf(tw, "  registration\tcannot be read: %s (as last seen:)\n", st.RegistryError)
		}
		for _, k := range st.Registered {
			mark := ""
			switch k.KID {
			case st.Active:
				mark = " (active)"
			case st.Next:
				mark = " (next)"
			}
			fmt.Fprintf(tw, "  registered\t%s%s\texpires %s\n", k.KID, mark, when(k.Expires, now))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("keys status: the rotation of %s failed or lost its state", strings.Join(failed, ", "))
	}
	return nil
}

// when prints a time with how far it is from now.
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now).Round(time.Minute)
	rel := "in " + days(d)
	if d < 0 {
		rel = days(-d) + " ago"
	}
	return t.UTC().Format(time.RFC3339) + " (" + rel + ")"
}

func days(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	return d.String()
}

func printReport(w io.Writer, client string, rep rotation.Report, grace time.Duration) {
	fmt.Fprintf(w, "client %s: %s\n", client, rep.Outcome)
	if len(rep.Registered) > 0 {
		fmt.Fprintf(w, "  registered before: %s\n", strings.Join(rep.Registered, ", "))
	}
	for i, a := range rep.Actions {
		fmt.Fprintf(w, "  %d. %s\n", i+1, a)
	}
	if rep.Outcome == rotation.OutcomeDryRun || rep.Outcome == rotation.OutcomeStarted {
		return
	}
	fmt.Fprintf(w, "  active: %s\n", rep.Active)
	if rep.Next != "" {
		fmt.Fprintf(w, "  rotation at step %s (next %s, old %s)\n", rep.Step, rep.Next, rep.Old)
	}
	for _, b := range rep.Blocking {
		fmt.Fprintf(w, "  replica %s still signs with %s: the old key stays registered until it signs with %s or stops\n", b.Replica, b.KID, rep.Next)
	}
	if len(rep.Blocking) > 0 {
		fmt.Fprintf(w, "  the broker looks again at %s (or run this again)\n", rep.WaitUntil.UTC().Format(time.RFC3339))
	} else if !rep.WaitUntil.IsZero() {
		fmt.Fprintf(w, "  the old key %s stays registered for the grace period (%s), until %s; the broker removes it then (or run this again)\n",
			rep.Old, grace, rep.WaitUntil.UTC().Format(time.RFC3339))
	}
}
