// Memory and CPU of a server process from /proc: peak RSS per phase (VmHWM after
// resetting it, cross-checked by sampling VmRSS) and CPU seconds (utime + stime).
import { readFileSync, writeFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times; 100 on every Linux we run on. */
const CLK_TCK = 100;

export interface ProcMemory {
  /** Resident set size now, bytes. */
  rss: number;
  /** Peak resident set size since start or the last reset, bytes. */
  hwm: number;
}

export function readMemory(pid: number): ProcMemory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string): number => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
    return Number(m[1]) * 1024;
  };
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

/** utime + stime of the process (all its threads), in seconds. */
export function readCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces; fields after its closing paren are fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Resets VmHWM to the current RSS (writing 5 to clear_refs, Linux >= 4.0). */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export interface PhaseUsage {
  /** RSS when the phase started, bytes. */
  startRss: number;
  /** Peak RSS during the phase, bytes. */
  peakRss: number;
  /** CPU seconds the process used during the phase. */
  cpuSeconds: number;
}

/**
 * Watches one process during a phase. The peak is the larger of VmHWM (reset at the
 * start, so it covers only this phase, and catches spikes between samples) and the
 * largest sampled VmRSS (the fallback where clear_refs is not writable).
 */
export class PhaseMonitor {
  private readonly cpuStart: number;
  private readonly startRss: number;
  private peak: number;
  private readonly timer: NodeJS.Timeout;
  private readonly hwmReset: boolean;

  constructor(
    private readonly pid: number,
    intervalMs = 25,
  ) {
    this.hwmReset = resetPeak(pid);
    this.startRss = readMemory(pid).rss;
    this.peak = this.startRss;
    this.cpuStart = readCpuSeconds(pid);
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  private sample(): void {
    try {
      this.peak = Math.max(this.peak, readMemory(this.pid).rss);
    } catch {
      // the process is gone; stop() reports what was seen
    }
  }

  stop(): PhaseUsage {
    clearInterval(this.timer);
    this.sample();
    const mem = readMemory(this.pid);
    const peakRss = this.hwmReset ? Math.max(this.peak, mem.hwm) : this.peak;
    return { startRss: this.startRss, peakRss, cpuSeconds: readCpuSeconds(this.pid) - this.cpuStart };
  }
}

function cpuTimes(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const ticks = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...
  const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0);
  const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/**
 * How many cores something else keeps busy: machine-wide CPU use over `ms` while the
 * bench and both servers sit idle (the machine may be shared with other work).
 */
export async function backgroundCores(ms: number, cores: number): Promise<number> {
  const a = cpuTimes();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuTimes();
  const total = b.total - a.total;
  return total > 0 ? ((b.busy - a.busy) / total) * cores : 0;
}
