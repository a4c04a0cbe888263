package main

import (
	"fmt"
	"strings"
)

// fixedOnReload are the settings a reload cannot apply: how the master
// listens, runs, logs and is found. A reload that changes one is refused
// with a line naming it, as the master refuses -listen and -mode; every
// other setting is applied (the new generation of children is started
// with it). TestReloadDecisions fails for a flag missing from both lists.
var fixedOnReload = []string{"listen", "mode", "backlog", "defer-accept", "listen-mode", "daemon", "pidfile", "log", "log-json",
	"user", "admin", "admin-public", "shutdown-delay"}

// notSettings are flags that are not settings of a running server.
var notSettings = []string{"config", "s"}

// fixedChanges names the settings a reload from s to n would have to change
// but cannot, with their old and new values.
func (s *settings) fixedChanges(n *settings) []string {
	var changed []string
	for _, name := range fixedOnReload {
		was, is := s.fs.Lookup(name).Value.String(), n.fs.Lookup(name).Value.String()
		if was != is {
			changed = append(changed, fmt.Sprintf("-%s (%q to %q)", name, was, is))
		}
	}
	return changed
}

// reloadError refuses a reload that would change a fixed setting.
func (s *settings) reloadError(n *settings) error {
	if changed := s.fixedChanges(n); len(changed) > 0 {
		return fmt.Errorf("%s: change only with a restart or an upgrade", strings.Join(changed, ", "))
	}
	return nil
}
