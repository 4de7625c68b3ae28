//! CPU time spent during a benchmark phase, read from Linux's `/proc`.
//!
//! Throughput on a shared 2-core machine moves by a quarter between runs
//! of the same binary; the CPU a call costs moves much less. So each
//! phase also reports the machine's busy CPU per call (every process:
//! client, vault and, on PostgreSQL, the database) and the ceiling that
//! implies on this machine's cores, plus the busiest thread of this
//! process (a thread near 100 % of one core is a serial bound: the SQLite
//! writer, for instance). Elsewhere than on Linux the figures are absent.
//!
//! `/proc` counts in clock ticks of `USER_HZ`, which Linux fixes at 100
//! on every architecture this builds for (the crate forbids `unsafe`, so
//! it cannot ask `sysconf(_SC_CLK_TCK)`).

use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second in `/proc/stat` and `/proc/<pid>/stat`.
const USER_HZ: f64 = 100.0;

/// What a phase used, between two [`CpuMark`]s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUse {
    /// Online cores (the fields of `/proc/stat` named `cpuN`).
    pub cores: usize,
    /// Busy core-seconds of the whole machine (user, nice, system, irq,
    /// softirq; not idle, I/O wait or steal).
    pub machine_secs: f64,
    /// Core-seconds of this process (user and system).
    pub process_secs: f64,
    /// The busiest thread of this process: its name and the share of one
    /// core it used over the phase (1.0 = a whole core).
    pub busiest_thread: Option<(String, f64)>,
    /// Core-seconds the hypervisor gave to others (steal): CPU this
    /// machine was due but did not get.
    pub steal_secs: f64,
}

impl CpuUse {
    /// Machine CPU per call, in microseconds.
    pub fn machine_us_per_call(&self, calls: usize) -> Option<f64> {
        (calls > 0 && self.machine_secs > 0.0).then(|| self.machine_secs * 1e6 / calls as f64)
    }

    /// Calls per second the machine's cores would allow at this CPU per
    /// call if nothing else bounded them.
    pub fn ceiling_per_sec(&self, calls: usize) -> Option<f64> {
        self.machine_us_per_call(calls)
            .map(|us| self.cores as f64 * 1e6 / us)
    }

    /// One line for a phase of `calls` calls: machine CPU per call, the
    /// ceiling, this process's share and its busiest thread.
    pub fn summary(&self, calls: usize) -> String {
        let mut s = match (self.machine_us_per_call(calls), self.ceiling_per_sec(calls)) {
            (Some(us), Some(max)) => {
                format!(
                    "{us:>7.0} µs/call, ceiling {max:>7.0}/s on {} cores",
                    self.cores
                )
            }
            _ => "no calls or no CPU counted".to_owned(),
        };
        if self.machine_secs > 0.0 {
            s.push_str(&format!(
                "; this process {:.0} %",
                // The two counters are read a moment apart.
                (100.0 * self.process_secs / self.machine_secs).min(100.0)
            ));
        }
        if let Some((name, share)) = &self.busiest_thread {
            s.push_str(&format!(
                "; busiest thread {name} {:.0} % of a core",
                100.0 * share
            ));
        }
        if self.steal_secs > 0.0 {
            s.push_str(&format!("; steal {:.2} core-s", self.steal_secs));
        }
        s
    }

    /// The figures as JSON (`idvault bench rpc --json`).
    pub fn to_json(&self, calls: usize) -> serde_json::Value {
        serde_json::json!({
            "cores": self.cores,
            "machine_core_seconds": self.machine_secs,
            "process_core_seconds": self.process_secs,
            "steal_core_seconds": self.steal_secs,
            "machine_us_per_call": self.machine_us_per_call(calls),
            "ceiling_per_sec": self.ceiling_per_sec(calls),
            "busiest_thread": self.busiest_thread.as_ref().map(|(name, share)| {
                serde_json::json!({ "name": name, "core_share": share })
            }),
        })
    }
}

/// A reading of the counters at one instant.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    machine: Option<MachineTicks>,
    process: Option<u64>,
    threads: HashMap<u32, (String, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct MachineTicks {
    cores: usize,
    busy: u64,
    steal: u64,
}

impl CpuMark {
    /// Reads the counters now.
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| machine_ticks(&s)),
            process: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| task_ticks(&s))
                .map(|(_, t)| t),
            threads: threads(),
        }
    }

    /// What was used since `self`, or `None` where `/proc` is missing.
    pub fn since(&self) -> Option<CpuUse> {
        let now = Self::now();
        let (a, b) = (self.machine?, now.machine?);
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let busiest = now
            .threads
            .iter()
            .filter_map(|(tid, (name, t))| {
                let before = self.threads.get(tid).map_or(0, |(_, t0)| *t0);
                Some((name.clone(), t.checked_sub(before)?))
            })
            .max_by_key(|(_, t)| *t)
            .filter(|_| wall > 0.0)
            .map(|(name, t)| (name, t as f64 / USER_HZ / wall));
        Some(CpuUse {
            cores: b.cores,
            machine_secs: b.busy.saturating_sub(a.busy) as f64 / USER_HZ,
            process_secs: now
                .process
                .zip(self.process)
                .map_or(0.0, |(b, a)| b.saturating_sub(a) as f64 / USER_HZ),
            busiest_thread: busiest,
            steal_secs: b.steal.saturating_sub(a.steal) as f64 / USER_HZ,
        })
    }
}

/// The busy and steal ticks of the `cpu` line of `/proc/stat`, and the
/// number of `cpuN` lines.
fn machine_ticks(stat: &str) -> Option<MachineTicks> {
    let mut total = None;
    let mut cores = 0;
    for line in stat.lines() {
        let mut f = line.split_ascii_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.map_while(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal …
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                total = Some((at(0) + at(1) + at(2) + at(5) + at(6), at(7)));
            }
            Some(c) if c.starts_with("cpu") => cores += 1,
            _ => {}
        }
    }
    let (busy, steal) = total?;
    Some(MachineTicks {
        cores: cores.max(1),
        busy,
        steal,
    })
}

/// The name and user + system ticks of a `/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat` line. The name is in parentheses and may
/// itself hold spaces and parentheses, so the fields are counted from the
/// last `)`.
fn task_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After the name: state (field 3) … utime (14), stime (15).
    let mut f = stat.get(close + 1..)?.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// Every thread of this process: id → (name, ticks).
fn threads() -> HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((tid, task_ticks(&stat)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_machine_line_and_counts_cores() {
        let stat = "cpu  217899 5 21869 162154 3057 7 1032 178 0 0\n\
                    cpu0 124517 0 8735 69170 258 0 412 95 0 0\n\
                    cpu1 93382 0 13134 92984 2799 0 620 83 0 0\n\
                    intr 1 2 3\nctxt 99\n";
        let m = machine_ticks(stat).expect("parsed");
        assert_eq!(m.cores, 2);
        assert_eq!(m.busy, 217_899 + 5 + 21_869 + 7 + 1_032);
        assert_eq!(m.steal, 178);
        assert!(machine_ticks("intr 1 2\n").is_none());
    }

    #[test]
    fn a_thread_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let line = "14304 (sqlx (sqlite) w) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1 0";
        assert_eq!(task_ticks(line), Some(("sqlx (sqlite) w".to_owned(), 281)));
        assert_eq!(task_ticks("14304 (x) S 1 2"), None);
        assert_eq!(task_ticks("no parentheses"), None);
    }

    #[test]
    fn per_call_and_ceiling() {
        let u = CpuUse {
            cores: 2,
            machine_secs: 1.2,
            ..CpuUse::default()
        };
        assert_eq!(u.machine_us_per_call(2_000), Some(600.0));
        let ceiling = u.ceiling_per_sec(2_000).expect("some");
        assert!((ceiling - 3_333.3).abs() < 0.1, "{ceiling}");
        assert_eq!(u.machine_us_per_call(0), None);
    }

    #[test]
    fn a_live_reading_on_linux() {
        let mark = CpuMark::now();
        // Burn a little CPU so the counters move.
        let mut x = 0u64;
        let until = Instant::now() + std::time::Duration::from_millis(60);
        while Instant::now() < until {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        if cfg!(target_os = "linux") {
            let u = mark.since().expect("/proc is there on Linux");
            assert!(u.cores >= 1);
            assert!(u.busiest_thread.is_some());
        }
    }
}
