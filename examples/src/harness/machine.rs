//! The machine the harness runs on, from `/proc/cpuinfo`: its CPU, and the theoretical fp32
//! peak its flags allow.

/// What `/proc/cpuinfo` says of the CPUs this process can use.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `model name` of the first CPU.
    pub model: String,
    /// Logical CPUs listed.
    pub cpus: usize,
    /// `cpu MHz` of the first CPU (the current clock the kernel reports; boost clocks are
    /// not listed there).
    pub mhz: f64,
    /// The widest vector instruction set the flags list: `avx512f`, `avx2+fma`, or `sse`.
    pub isa: &'static str,
    /// fp32 lanes of one vector of that set.
    pub lanes: usize,
}

impl Machine {
    /// Reads `/proc/cpuinfo` (an unknown machine, 1 CPU at 0 MHz, where it cannot).
    pub fn read() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    /// Parses a `/proc/cpuinfo` text.
    pub fn parse(cpuinfo: &str) -> Self {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let flags = field("flags").unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let (isa, lanes) = if has("avx512f") {
            ("avx512f", 16)
        } else if has("avx2") && has("fma") {
            ("avx2+fma", 8)
        } else {
            ("sse", 4)
        };
        Self {
            model: field("model name").unwrap_or_else(|| "unknown CPU".into()),
            cpus: cpuinfo
                .lines()
                .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
                .count()
                .max(1),
            mhz: field("cpu MHz").and_then(|v| v.parse().ok()).unwrap_or(0.0),
            isa,
            lanes,
        }
    }

    /// The theoretical fp32 peak in GFLOP/s: every listed CPU issuing two fused multiply-adds of
    /// the widest vector per cycle (2 FLOP per lane each) at `mhz`. An upper bound: CPUs that
    /// split 512-bit operations (AMD Zen 4) or share cores between two listed CPUs
    /// (hyper-threads) reach half of it or less.
    pub fn peak_gflops(&self) -> f64 {
        self.cpus as f64 * self.mhz * 1e-3 * (self.lanes * 2 * 2) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpus_the_clock_and_the_vector_width() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.152\nflags\t\t: fpu sse avx2 fma avx512f avx512ifma\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.152\nflags\t\t: fpu sse avx2 fma avx512f\n";
        let m = Machine::parse(text);
        assert_eq!((m.cpus, m.isa, m.lanes), (2, "avx512f", 16));
        assert_eq!(m.model, "AMD EPYC");
        // 2 CPUs × 2.596 GHz × 64 FLOP per cycle
        assert!((m.peak_gflops() - 332.3).abs() < 0.1, "{}", m.peak_gflops());
        let avx2 = Machine::parse("processor : 0\nflags : sse avx2 fma\n");
        assert_eq!((avx2.isa, avx2.lanes), ("avx2+fma", 8));
        // avx512ifma alone is not avx512f
        let ifma = Machine::parse("processor : 0\nflags : sse avx512ifma\n");
        assert_eq!(ifma.isa, "sse");
        assert_eq!(Machine::parse("").cpus, 1);
    }
}
