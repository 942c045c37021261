package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// intoCgroup sets cmd to start directly inside the cgroup v2 group dir
// that tokend made for its lease (clone3 with CLONE_INTO_CGROUP), so that
// tokend's memory brake can freeze this build and nothing else, from its
// first instruction on. If the group cannot be opened the command starts
// where tokenctl runs.
func intoCgroup(cmd *exec.Cmd, dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tokenctl: open lease cgroup %s: %v; running %s outside it\n", dir, err, cmd.Args[0])
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
}

// start starts cmd. When it was set to start inside a cgroup and that
// fails (clone3 needs write access to the common ancestor of this process's
// group and the lease's, which only root has, or a kernel older than 5.7),
// it starts a copy outside the group and says so once: tokend then moves
// the build into the group itself. It returns the command that runs.
func start(cmd *exec.Cmd) (*exec.Cmd, error) {
	err := cmd.Start()
	if cmd.SysProcAttr == nil || !cmd.SysProcAttr.UseCgroupFD {
		return cmd, err
	}
	unix.Close(cmd.SysProcAttr.CgroupFD)
	if err == nil {
		return cmd, nil
	}
	retry := exec.Command(cmd.Path, cmd.Args[1:]...)
	retry.Args, retry.Env, retry.Dir = cmd.Args, cmd.Env, cmd.Dir
	retry.Stdin, retry.Stdout, retry.Stderr, retry.ExtraFiles = cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.ExtraFiles
	if rerr := retry.Start(); rerr != nil {
		return retry, rerr
	}
	fmt.Fprintf(os.Stderr, "tokenctl: cannot start %s in its lease cgroup (%v); started it outside, tokend moves it in\n", cmd.Args[0], err)
	return retry, nil
}
