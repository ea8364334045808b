//! [`DeviceId`]: the one name of a device a backend or an actor stream runs on.
//!
//! Parsed once from the command line (`--device`), a placement's `[[placement.streams]]
//! device = ...`, or a library caller, and passed around typed. The built-in devices are `cpu`,
//! `cuda[:N]` and `ptx-interp`; any other well-formed name is kept as [`DeviceId::Custom`] so a
//! caller's own backend factory can serve it (the built-in factories refuse it by name).

use std::fmt;
use std::str::FromStr;

/// A device a backend runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum DeviceId {
    /// The CPU kernels of this crate.
    #[default]
    Cpu,
    /// CUDA device `N` (`cuda` alone is device 0), through troupe-ptx and cudarc.
    Cuda(usize),
    /// troupe-ptx's PTX interpreter, which runs the GPU kernels on the CPU.
    PtxInterp,
    /// A device only a caller-supplied backend factory knows (letters, digits, `-_.:`).
    Custom(String),
}

/// Why a device name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device `{name}`: {reason}")]
pub struct ParseDeviceError {
    pub name: String,
    pub reason: &'static str,
}

impl DeviceId {
    /// Whether this is one of the devices troupe itself knows how to build.
    pub fn is_builtin(&self) -> bool {
        !matches!(self, DeviceId::Custom(_))
    }
}

impl FromStr for DeviceId {
    type Err = ParseDeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseDeviceError {
            name: s.to_string(),
            reason,
        };
        match s {
            "" => Err(err("empty device name")),
            "cpu" => Ok(DeviceId::Cpu),
            "cuda" => Ok(DeviceId::Cuda(0)),
            "ptx-interp" => Ok(DeviceId::PtxInterp),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    return n
                        .parse::<usize>()
                        .ok()
                        .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
                        .map(DeviceId::Cuda)
                        .ok_or_else(|| err("expected cuda or cuda:N with N a device number"));
                }
                if s.len() > 64 {
                    return Err(err("longer than 64 characters"));
                }
                if !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                {
                    return Err(err(
                        "expected cpu, cuda[:N], ptx-interp or a name of letters, digits and -_.:",
                    ));
                }
                Ok(DeviceId::Custom(s.to_string()))
            }
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Cpu => f.write_str("cpu"),
            DeviceId::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceId::PtxInterp => f.write_str("ptx-interp"),
            DeviceId::Custom(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_round_trip() {
        for (s, d) in [
            ("cpu", DeviceId::Cpu),
            ("cuda:3", DeviceId::Cuda(3)),
            ("ptx-interp", DeviceId::PtxInterp),
            ("npu.0", DeviceId::Custom("npu.0".into())),
        ] {
            let parsed: DeviceId = s.parse().unwrap();
            assert_eq!(parsed, d);
            assert_eq!(parsed.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceId>().unwrap(), DeviceId::Cuda(0));
    }

    #[test]
    fn malformed_names_are_refused() {
        for s in ["", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "a b", "cpu\n"] {
            assert!(s.parse::<DeviceId>().is_err(), "{s:?} parsed");
        }
        // `cpu1` is no longer a CPU by prefix: it is a custom name, served only by a factory.
        assert_eq!(
            "cpu1".parse::<DeviceId>().unwrap(),
            DeviceId::Custom("cpu1".into())
        );
    }
}
