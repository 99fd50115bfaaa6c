package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/govirtiofsd/govirtiofsd/internal/passthrough"
)

func serveVhostUser(ctx context.Context, c *config, fsys *passthrough.FS, log *slog.Logger) error {
	return errors.New("vhost-user transport is not wired yet")
}
