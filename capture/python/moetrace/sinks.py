"""sinks.py — where a producer's ingest stream goes: a `moetrace-capture ingest` subprocess, a FIFO or file, or a
Unix socket that `ingest --listen` created. Each has write(bytes) and close(); close raises if ingest failed."""
import os
import shutil
import socket
import subprocess


class IngestError(RuntimeError):
    """`moetrace-capture ingest` exited with an error (its exit status and one-line message)."""

    def __init__(self, status, message):
        super().__init__(f"moetrace-capture ingest exited {status}: {message}")
        self.status, self.message = status, message


class ProcessSink:
    """Start `moetrace-capture ingest --out RUN [args]` and stream into its standard input. A full pipe blocks
    write(): that is ingest's back-pressure when the disk is slower than the model."""

    def __init__(self, out, args=(), exe=None, env=None):
        exe = exe or os.environ.get("MOETRACE_CAPTURE") or shutil.which("moetrace-capture") or "moetrace-capture"
        self.cmd = [exe, "ingest", "--out", str(out), "--quiet", *args]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.status = None

    def write(self, data):
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            self._finish()

    def _finish(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        err = self.proc.stderr.read().decode(errors="replace").strip()
        self.status = self.proc.wait()
        if self.status != 0:
            raise IngestError(self.status, err)

    def close(self):
        if self.status is None:
            self._finish()


class FileSink:
    """Write the stream to a path (a FIFO that `ingest --input` reads, or a file) or to an open binary file."""

    def __init__(self, target):
        self.f = open(target, "wb", buffering=1 << 20) if isinstance(target, (str, os.PathLike)) else target
        self.owned = isinstance(target, (str, os.PathLike))

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.flush()
        if self.owned:
            self.f.close()


class SocketSink:
    """Connect to the Unix socket of `moetrace-capture ingest --listen PATH`, waiting up to `timeout` seconds for
    ingest to create it and start listening (the socket file appears before the listener is ready)."""

    def __init__(self, path, timeout=60.0):
        import time
        deadline = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.s.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def write(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.shutdown(socket.SHUT_WR)
        self.s.close()
