//! The standard `process_*` metrics, read from `/proc` at scrape time (Linux only; elsewhere
//! they are left out).

/// Clock ticks per second in `/proc/<pid>/stat`. Linux fixes USER_HZ at 100 for user space on
/// every architecture (procfs libraries hard-code it too); asking `sysconf` would need `unsafe`.
const USER_HZ: f64 = 100.0;

/// What `/proc` says of this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
    pub virtual_memory_bytes: f64,
    pub resident_memory_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
}

impl Process {
    /// `None` where there is no `/proc` (not Linux) or it cannot be read.
    pub fn read() -> Option<Process> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = parse_stat(&read("/proc/self/stat")?)?;
        let boot_time = parse_boot_time(&read("/proc/stat")?)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(Process {
            cpu_seconds: (stat.utime + stat.stime) as f64 / USER_HZ,
            start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / USER_HZ,
            virtual_memory_bytes: stat.vsize as f64,
            resident_memory_bytes: parse_status_kb(&read("/proc/self/status")?, "VmRSS:")? as f64
                * 1024.0,
            open_fds: open_fds as f64,
            max_fds: parse_max_open_files(&read("/proc/self/limits")?)?,
        })
    }
}

/// The fields of `/proc/self/stat` that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
}

/// Fields counted from 1 as in proc(5); the command name (field 2) may hold spaces and
/// parentheses, so the count starts after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
    })
}

/// `btime` of `/proc/stat`: boot time in unix seconds.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A `kB` line of `/proc/self/status`, e.g. `VmRSS:     1234 kB`.
fn parse_status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `unlimited` is +Inf.
fn parse_max_open_files(text: &str) -> Option<f64> {
    let soft = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(f64::INFINITY),
        n => n.parse::<u64>().ok().map(|n| n as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (sw (x) y) S 1 4242 4242 0 -1 4194560 1375 0 0 0 250 75 0 0 20 0 9 0 \
                    123456 987654321 3000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 75,
                start_ticks: 123456,
                vsize: 987654321
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status = "Name:\tswitchyard\nVmSize:\t  10000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(2048));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 1048576              files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024.0));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), Some(f64::INFINITY));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let p = Process::read().expect("/proc is readable on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds > now - 86_400.0 && p.start_time_seconds <= now + 1.0,
            "{p:?}"
        );
        assert!(
            p.resident_memory_bytes > 0.0 && p.virtual_memory_bytes >= p.resident_memory_bytes,
            "{p:?}"
        );
        assert!(p.open_fds >= 3.0 && p.max_fds >= p.open_fds, "{p:?}");
    }
}
