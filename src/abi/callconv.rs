//! The closed set of calling conventions tierbridge generates code for.

use std::fmt;
use std::str::FromStr;

use super::error::AbiError;

/// An x86-64 calling convention.
///
/// Both are available on every x86-64 host: Linux code can call and define
/// Win64 functions (`extern "win64"` in Rust, `__attribute__((ms_abi))` in C).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallConv {
    /// The System V AMD64 psABI (Linux, the BSDs, macOS).
    SysV,
    /// The Microsoft x64 convention.
    Win64,
}

impl CallConv {
    /// Both conventions.
    pub const ALL: [CallConv; 2] = [CallConv::SysV, CallConv::Win64];

    /// The C convention of the host, from `target-lexicon`.
    ///
    /// # Errors
    /// [`AbiError::UnsupportedHost`] on hosts that are not x86-64 (the libffi
    /// backend still works there through its own default ABI).
    pub fn host() -> Result<CallConv, AbiError> {
        use target_lexicon::{Architecture, HOST, OperatingSystem};
        match (HOST.architecture, HOST.operating_system) {
            (Architecture::X86_64, OperatingSystem::Windows) => Ok(CallConv::Win64),
            (Architecture::X86_64, _) => Ok(CallConv::SysV),
            _ => Err(AbiError::UnsupportedHost(HOST.to_string())),
        }
    }

    /// The name used in text and in conformance files.
    pub const fn name(self) -> &'static str {
        match self {
            CallConv::SysV => "sysv",
            CallConv::Win64 => "win64",
        }
    }
}

impl fmt::Display for CallConv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CallConv {
    type Err = AbiError;
    fn from_str(s: &str) -> Result<CallConv, AbiError> {
        match s {
            "sysv" | "system_v" => Ok(CallConv::SysV),
            "win64" | "windows_fastcall" => Ok(CallConv::Win64),
            _ => Err(AbiError::UnknownCallConv(s.to_owned())),
        }
    }
}
