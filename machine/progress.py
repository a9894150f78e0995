"""The progress line every long job prints (loading scans, resampling, extracting features).

One class, `Progress(total, what, unit="", min_total=0)`: `update(done)` writes
"what: done/total unit (pct%, rate unit/s, ETA s)" to stderr, as one rewritten line on a terminal
and as a line every 5 s in a log file. Jobs too small to wait on stay silent: a line is shown only
when total >= min_total, or once the job has run for more than 2 s. No SPEC section: this is
plumbing, not the method.

    python -m machine.progress      # a 5 s demo line
"""
import sys
import time


class Progress:
    """A stderr progress counter with rate and ETA (see the module docstring)."""

    def __init__(self, total, what, unit="", min_total=0):
        self.total, self.what, self.unit = total, what, unit
        self.t0, self.last = time.time(), 0.0
        self.on = total >= min_total
        self.tty = sys.stderr.isatty()

    def update(self, done):
        now = time.time()
        self.on = self.on or now - self.t0 > 2.0
        if not self.on or (now - self.last < (0.5 if self.tty else 5.0) and done < self.total):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        eta = elapsed / max(done, 1) * (self.total - done)
        unit = f" {self.unit}" if self.unit else ""
        start, end = ("\r", "\n" if done >= self.total else "") if self.tty else ("", "\n")
        rate = done / elapsed
        rate = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"         # slow jobs (epochs) are not "0/s"
        sys.stderr.write(f"{start}{self.what}: {done}/{self.total}{unit} ({100 * done / self.total:.0f}%, "
                         f"{rate}{unit}/s, ETA {eta:.0f} s)   {end}")
        sys.stderr.flush()


if __name__ == "__main__":
    p = Progress(50, "demo", "items")
    for i in range(50):
        time.sleep(0.1)
        p.update(i + 1)
