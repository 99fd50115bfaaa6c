package guest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bootConfig is one QEMU invocation.
type bootConfig struct {
	env         *Env
	initrd      string
	sock        string
	tag         string
	cmdline     string // appended to the fixed part of -append
	allowReboot bool   // without -no-reboot: `reboot -f` in the guest resets it
	timeout     time.Duration
	// onLine sees every console line; a non-empty reply is written to the
	// guest's console input. kill asks for QEMU to be stopped.
	onLine func(line string) (reply string, kill bool)
	log    io.Writer // console copy; may be nil
}

// qemuArgs is the DESIGN.md §5 command line.
func qemuArgs(c bootConfig) []string {
	args := []string{
		"-accel", "tcg", "-M", "q35", "-m", "512M", "-smp", "1",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
		"-chardev", "socket,id=c0,path=" + c.sock,
		"-device", "vhost-user-fs-pci,queue-size=1024,chardev=c0,tag=" + c.tag,
		"-kernel", c.env.Vmlinux, "-initrd", c.initrd,
		"-append", "console=ttyS0 quiet panic=-1 " + c.cmdline,
		"-nographic",
	}
	if !c.allowReboot {
		args = append(args, "-no-reboot")
	}
	return args
}

// bootResult is how one QEMU run ended.
type bootResult struct {
	took     time.Duration
	timedOut bool
	exitErr  error
	stderr   string
}

// boot runs QEMU until it exits, the timeout passes, or onLine asks to kill.
func boot(ctx context.Context, c bootConfig) bootResult {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd := exec.Command(c.env.QEMU, qemuArgs(c)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return bootResult{exitErr: err}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return bootResult{exitErr: err}
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return bootResult{exitErr: fmt.Errorf("start qemu: %w", err)}
	}
	var (
		mu     sync.Mutex
		killed bool
	)
	kill := func() {
		mu.Lock()
		defer mu.Unlock()
		if !killed {
			killed = true
			cmd.Process.Kill()
		}
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		br := bufio.NewReader(stdout)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				line = strings.TrimRight(line, "\r\n")
				if c.log != nil {
					fmt.Fprintln(c.log, line)
				}
				if c.onLine != nil {
					reply, k := c.onLine(line)
					if reply != "" {
						io.WriteString(stdin, reply+"\n")
					}
					if k {
						kill()
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	timedOut := false
	select {
	case <-readDone:
	case <-ctx.Done():
		timedOut = true
		kill()
		<-readDone
	}
	err = cmd.Wait()
	stdin.Close()
	return bootResult{took: time.Since(start), timedOut: timedOut, exitErr: err, stderr: strings.TrimSpace(stderr.String())}
}
