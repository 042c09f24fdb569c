//! The sampled items: CPU use, virtual memory and swap, each watched over a window and
//! reported as average, minimum and maximum of its readings (iostat's probe is in disk.rs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{parse_err, read, InfoError, Item};

/// How long the sampled items watch the host, and how often they read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub window: Duration,
    pub interval: Duration,
}

impl Sampling {
    /// `interval` is clamped to the window (and to 10 ms at least); a window shorter
    /// than one interval still gets two readings, one interval apart.
    pub fn new(window: Duration, interval: Duration) -> Sampling {
        let interval = interval
            .max(Duration::from_millis(10))
            .min(window.max(Duration::from_millis(10)));
        Sampling { window, interval }
    }
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling::new(Duration::from_secs(1), Duration::from_millis(250))
    }
}

/// Average, minimum and maximum of each reading over the window.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Summary {
    pub average: BTreeMap<String, f64>,
    pub minimum: BTreeMap<String, f64>,
    pub maximum: BTreeMap<String, f64>,
    /// How many readings the figures are made of.
    pub samples: usize,
    pub window_seconds: f64,
}

/// A source of readings. Counter-based probes return None for their first reading (it
/// is only the baseline their deltas start from).
pub(super) trait Probe {
    fn read(&mut self) -> Result<Option<BTreeMap<&'static str, f64>>, InfoError>;
}

/// Read every probe at once, every `interval`, for `window`; a probe that fails is
/// dropped from the loop with its error, the others go on.
pub(super) fn run(probes: &mut [&mut dyn Probe], s: &Sampling) -> Vec<Result<Summary, InfoError>> {
    let mut readings: Vec<Result<Vec<BTreeMap<&'static str, f64>>, InfoError>> =
        probes.iter().map(|_| Ok(Vec::new())).collect();
    let start = Instant::now();
    let mut tick = 0u32;
    loop {
        for (p, r) in probes.iter_mut().zip(readings.iter_mut()) {
            if let Ok(list) = r {
                match p.read() {
                    Ok(Some(v)) => list.push(v),
                    Ok(None) => {}
                    Err(e) => *r = Err(e),
                }
            }
        }
        tick += 1;
        let next = s.interval * tick;
        // Two readings at least: counter-based probes need one delta.
        if next > s.window && tick >= 2 {
            break;
        }
        std::thread::sleep(next.saturating_sub(start.elapsed()));
    }
    let window_seconds = start.elapsed().as_secs_f64();
    readings
        .into_iter()
        .map(|r| r.map(|list| summarise(&list, window_seconds)))
        .collect()
}

fn summarise(list: &[BTreeMap<&'static str, f64>], window_seconds: f64) -> Summary {
    let mut s = Summary {
        samples: list.len(),
        window_seconds,
        ..Summary::default()
    };
    for reading in list {
        for (k, v) in reading {
            *s.average.entry(k.to_string()).or_insert(0.0) += v / list.len() as f64;
            let min = s.minimum.entry(k.to_string()).or_insert(*v);
            *min = min.min(*v);
            let max = s.maximum.entry(k.to_string()).or_insert(*v);
            *max = max.max(*v);
        }
    }
    s
}

/// Run the probes of the sampled `items` together over one window.
pub(super) fn sample_items(
    items: &[Item],
    s: &Sampling,
) -> BTreeMap<Item, Result<serde_json::Value, InfoError>> {
    let mut out = BTreeMap::new();
    let mut cpu_p = None;
    let mut vmem_p = None;
    let mut smem_p = None;
    let mut io_p = None;
    for i in items {
        match i {
            Item::Cpu => cpu_p = Some(CpuProbe::default()),
            Item::Vmem => vmem_p = Some(MemProbe::vmem()),
            Item::Smem => smem_p = Some(MemProbe::swap()),
            Item::Iostat => match super::disk::IostatProbe::new() {
                Ok(p) => io_p = Some(p),
                Err(e) => {
                    out.insert(Item::Iostat, Err(e));
                }
            },
            _ => {}
        }
    }
    let mut order = Vec::new();
    let mut probes: Vec<&mut dyn Probe> = Vec::new();
    if let Some(p) = cpu_p.as_mut() {
        order.push(Item::Cpu);
        probes.push(p);
    }
    if let Some(p) = vmem_p.as_mut() {
        order.push(Item::Vmem);
        probes.push(p);
    }
    if let Some(p) = smem_p.as_mut() {
        order.push(Item::Smem);
        probes.push(p);
    }
    if let Some(p) = io_p.as_mut() {
        order.push(Item::Iostat);
        probes.push(p);
    }
    if probes.is_empty() {
        return out;
    }
    let results = run(&mut probes, s);
    drop(probes);
    for (item, summary) in order.into_iter().zip(results) {
        let v = match item {
            Item::Cpu => super::to_value(summary.map(|s| cpu_p.as_ref().unwrap().finish(s))),
            Item::Vmem => super::to_value(summary.map(|s| vmem_p.as_ref().unwrap().finish_vmem(s))),
            Item::Smem => super::to_value(summary.map(|s| smem_p.as_ref().unwrap().finish_swap(s))),
            _ => super::to_value(summary.map(|s| io_p.take().unwrap().finish(s))),
        };
        out.insert(item, v);
    }
    out
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cpu {
    /// Logical CPUs (the `cpuN` lines of /proc/stat).
    pub count: usize,
    /// Percent of all CPUs' time, keys: user, nice, system, idle, iowait, irq,
    /// softirq, steal, busy (everything but idle and iowait).
    #[serde(flatten)]
    pub summary: Summary,
}

pub fn cpu(s: &Sampling) -> Result<Cpu, InfoError> {
    let mut p = CpuProbe::default();
    let summary = run(&mut [&mut p], s).pop().expect("one probe")?;
    Ok(p.finish(summary))
}

#[derive(Default)]
struct CpuProbe {
    count: usize,
    last: Option<[u64; 8]>,
}

const CPU_FIELDS: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

impl CpuProbe {
    fn finish(&self, summary: Summary) -> Cpu {
        Cpu {
            count: self.count,
            summary,
        }
    }
}

impl Probe for CpuProbe {
    fn read(&mut self) -> Result<Option<BTreeMap<&'static str, f64>>, InfoError> {
        const P: &str = "/proc/stat";
        let text = read(P)?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| parse_err(P, "no aggregate cpu line"))?;
        let mut cur = [0u64; 8];
        for (slot, v) in cur.iter_mut().zip(line.split_whitespace().skip(1)) {
            *slot = v
                .parse()
                .map_err(|_| parse_err(P, format!("bad cpu line {line:?}")))?;
        }
        self.count = text
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        let Some(prev) = self.last.replace(cur) else {
            return Ok(None);
        };
        let d: Vec<f64> = cur
            .iter()
            .zip(prev)
            .map(|(c, p)| c.saturating_sub(p) as f64)
            .collect();
        let total: f64 = d.iter().sum();
        let mut out = BTreeMap::new();
        for (k, v) in CPU_FIELDS.iter().zip(&d) {
            out.insert(*k, if total > 0.0 { v * 100.0 / total } else { 0.0 });
        }
        let idle = out["idle"] + out["iowait"];
        out.insert("busy", if total > 0.0 { 100.0 - idle } else { 0.0 });
        Ok(Some(out))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Vmem {
    pub total_bytes: u64,
    /// Keys: used_bytes, available_bytes, free_bytes, buffers_bytes, cached_bytes,
    /// percent (used of total, `used` = total - available as `free` computes it).
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Smem {
    pub total_bytes: u64,
    /// Keys: used_bytes, free_bytes, percent.
    #[serde(flatten)]
    pub summary: Summary,
}

pub fn vmem(s: &Sampling) -> Result<Vmem, InfoError> {
    let mut p = MemProbe::vmem();
    let summary = run(&mut [&mut p], s).pop().expect("one probe")?;
    Ok(p.finish_vmem(summary))
}

pub fn smem(s: &Sampling) -> Result<Smem, InfoError> {
    let mut p = MemProbe::swap();
    let summary = run(&mut [&mut p], s).pop().expect("one probe")?;
    Ok(p.finish_swap(summary))
}

struct MemProbe {
    swap: bool,
    total: u64,
}

impl MemProbe {
    fn vmem() -> MemProbe {
        MemProbe {
            swap: false,
            total: 0,
        }
    }
    fn swap() -> MemProbe {
        MemProbe {
            swap: true,
            total: 0,
        }
    }
    fn finish_vmem(&self, summary: Summary) -> Vmem {
        Vmem {
            total_bytes: self.total,
            summary,
        }
    }
    fn finish_swap(&self, summary: Summary) -> Smem {
        Smem {
            total_bytes: self.total,
            summary,
        }
    }
}

/// /proc/meminfo in bytes (its values are kB).
fn meminfo() -> Result<BTreeMap<String, u64>, InfoError> {
    const P: &str = "/proc/meminfo";
    let text = read(P)?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let mut w = v.split_whitespace();
        let n: u64 = w
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| parse_err(P, format!("bad line {line:?}")))?;
        let mult = if w.next() == Some("kB") { 1024 } else { 1 };
        out.insert(k.to_string(), n * mult);
    }
    Ok(out)
}

impl Probe for MemProbe {
    fn read(&mut self) -> Result<Option<BTreeMap<&'static str, f64>>, InfoError> {
        let m = meminfo()?;
        let get = |k: &str| {
            m.get(k)
                .copied()
                .ok_or_else(|| parse_err("/proc/meminfo", format!("no {k}")))
        };
        let pct = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 * 100.0 / total as f64
            }
        };
        if self.swap {
            let (total, free) = (get("SwapTotal")?, get("SwapFree")?);
            self.total = total;
            let used = total.saturating_sub(free);
            return Ok(Some(BTreeMap::from([
                ("used_bytes", used as f64),
                ("free_bytes", free as f64),
                ("percent", pct(used, total)),
            ])));
        }
        let total = get("MemTotal")?;
        let avail = get("MemAvailable")?;
        self.total = total;
        let used = total.saturating_sub(avail);
        Ok(Some(BTreeMap::from([
            ("used_bytes", used as f64),
            ("available_bytes", avail as f64),
            ("free_bytes", get("MemFree")? as f64),
            ("buffers_bytes", get("Buffers")? as f64),
            ("cached_bytes", get("Cached")? as f64),
            ("percent", pct(used, total)),
        ])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Sampling {
        Sampling::new(Duration::from_millis(400), Duration::from_millis(100))
    }

    #[test]
    fn cpu_percentages_add_up() {
        let c = cpu(&quick()).unwrap();
        assert!(c.count >= 1);
        assert!(c.summary.samples >= 3, "{c:?}");
        let sum: f64 = CPU_FIELDS.iter().map(|k| c.summary.average[*k]).sum();
        assert!((sum - 100.0).abs() < 0.5 || sum == 0.0, "{sum} {c:?}");
        for k in CPU_FIELDS {
            let (lo, avg, hi) = (
                c.summary.minimum[k],
                c.summary.average[k],
                c.summary.maximum[k],
            );
            assert!(
                lo <= avg + 1e-9 && avg <= hi + 1e-9 && (0.0..=100.0).contains(&hi),
                "{k}"
            );
        }
    }

    #[test]
    fn vmem_and_swap_are_within_total() {
        let v = vmem(&quick()).unwrap();
        let m = meminfo().unwrap();
        assert_eq!(v.total_bytes, m["MemTotal"]);
        assert!(v.summary.maximum["used_bytes"] <= v.total_bytes as f64);
        assert!(v.summary.average["percent"] > 0.0 && v.summary.average["percent"] < 100.0);
        let s = smem(&quick()).unwrap();
        assert_eq!(s.total_bytes, m["SwapTotal"]);
        assert!(s.summary.maximum["used_bytes"] <= s.total_bytes as f64);
    }

    #[test]
    fn a_zero_window_still_gives_one_delta() {
        let c = cpu(&Sampling::new(Duration::ZERO, Duration::from_millis(50))).unwrap();
        assert_eq!(c.summary.samples, 1);
        assert!(c.summary.average.contains_key("busy"));
    }

    #[test]
    fn summary_of_readings() {
        let r = |v| BTreeMap::from([("x", v)]);
        let s = summarise(&[r(1.0), r(3.0), r(2.0)], 1.0);
        assert_eq!(
            (s.minimum["x"], s.average["x"], s.maximum["x"]),
            (1.0, 2.0, 3.0)
        );
        assert_eq!(s.samples, 3);
    }

    #[test]
    fn sampled_items_share_one_window() {
        let s = quick();
        let t = Instant::now();
        let r = sample_items(&[Item::Cpu, Item::Vmem, Item::Smem, Item::Iostat], &s);
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.len(), 4);
        assert!(r.values().all(|v| v.is_ok()), "{r:?}");
    }
}
