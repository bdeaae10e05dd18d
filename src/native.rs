//! Native libraries and their symbols: how the crate and its users find the
//! C functions they call (`dlopen`/`dlsym` through `libloading`).
//!
//! ```
//! use tierbridge::native::NativeLibrary;
//!
//! // Functions the program itself links (libc's, on Linux):
//! let process = NativeLibrary::this_process()?;
//! assert!(!process.symbol("strlen")?.is_null());
//! // A library the program does not link is opened by name first.
//! # #[cfg(target_os = "linux")] {
//! // SAFETY: loading the C math library runs only its own initialisers.
//! let libm = unsafe { NativeLibrary::open("libm.so.6") }?;
//! assert!(!libm.symbol("pow")?.is_null());
//! # }
//! # Ok::<(), tierbridge::native::NativeError>(())
//! ```

use std::ffi::c_void;
use std::fmt;

use thiserror::Error;

/// Errors of symbol lookup: each names the library and the symbol.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NativeError {
    /// The library could not be loaded.
    #[error("cannot load {library}: {reason}")]
    Open {
        /// The name or path given.
        library: String,
        /// The loader's reason.
        reason: String,
    },
    /// The library has no such symbol.
    #[error("no symbol {symbol} in {library}{hint}")]
    Symbol {
        /// Where it was looked for.
        library: String,
        /// The symbol.
        symbol: String,
        /// What may help (empty, or a sentence starting with "; ").
        hint: String,
    },
    /// A symbol name with a NUL byte in it.
    #[error("symbol name {0:?} contains a NUL byte")]
    BadName(String),
}

/// What [`NativeLibrary::this_process`] calls itself in errors.
const PROCESS: &str = "this process (the program and the libraries loaded with it)";

/// A loaded shared library, or the process's own symbols; its symbols stay
/// valid while it lives (the process's, for the whole run).
pub struct NativeLibrary {
    lib: libloading::Library,
    name: String,
}

impl fmt::Debug for NativeLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeLibrary")
            .field("name", &self.name)
            .finish()
    }
}

impl NativeLibrary {
    /// Opens a shared library by path or by name (`"libm.so.6"`, found as the
    /// system's loader finds libraries).
    ///
    /// # Safety
    /// Loading a library runs its initialisers, which may do anything.
    ///
    /// # Errors
    /// [`NativeError::Open`] with the loader's reason.
    pub unsafe fn open(name: &str) -> Result<NativeLibrary, NativeError> {
        // SAFETY: forwarded contract.
        unsafe { libloading::Library::new(name) }
            .map(|lib| NativeLibrary {
                lib,
                name: name.to_string(),
            })
            .map_err(|e| NativeError::Open {
                library: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// The process's own symbols: the program and every library loaded with
    /// it or made global since (`dlopen(NULL)`; on Windows, the executable).
    /// A library the program does not link — libm on many systems — is not
    /// among them: open it with [`NativeLibrary::open`].
    ///
    /// # Errors
    /// [`NativeError::Open`] if the platform refuses (it does not on Linux).
    pub fn this_process() -> Result<NativeLibrary, NativeError> {
        #[cfg(unix)]
        let lib = Ok::<_, libloading::Error>(libloading::os::unix::Library::this().into());
        #[cfg(windows)]
        let lib = libloading::os::windows::Library::this().map(Into::into);
        lib.map(|lib| NativeLibrary {
            lib,
            name: PROCESS.to_string(),
        })
        .map_err(|e| NativeError::Open {
            library: PROCESS.to_string(),
            reason: e.to_string(),
        })
    }

    /// Its name, as given to [`NativeLibrary::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of `symbol` (`dlsym`): a function or data of the library,
    /// valid while this handle lives.
    ///
    /// # Errors
    /// [`NativeError::Symbol`], naming the library and the symbol (with a
    /// hint when the process's own symbols were searched);
    /// [`NativeError::BadName`].
    pub fn symbol(&self, symbol: &str) -> Result<*const c_void, NativeError> {
        if symbol.contains('\0') {
            return Err(NativeError::BadName(symbol.to_string()));
        }
        let name = format!("{symbol}\0");
        // SAFETY: the symbol is only read as an address, never called here.
        match unsafe { self.lib.get::<*const c_void>(name.as_bytes()) } {
            Ok(s) if !s.is_null() => Ok(*s),
            _ => Err(NativeError::Symbol {
                library: self.name.clone(),
                symbol: symbol.to_string(),
                hint: if self.name == PROCESS {
                    "; a function of a library the program does not link (libm's pow, say) \
                     is found in that library, once opened with NativeLibrary::open"
                        .into()
                } else {
                    String::new()
                },
            }),
        }
    }

    /// The address of `symbol` in the first of `libraries` that has it.
    ///
    /// # Errors
    /// [`NativeError::Symbol`] naming every library searched, when none has it.
    pub fn find(libraries: &[&NativeLibrary], symbol: &str) -> Result<*const c_void, NativeError> {
        for lib in libraries {
            match lib.symbol(symbol) {
                Ok(p) => return Ok(p),
                Err(NativeError::Symbol { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(NativeError::Symbol {
            library: libraries
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", "),
            symbol: symbol.to_string(),
            hint: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_library_and_the_symbol() {
        let p = NativeLibrary::this_process().unwrap();
        let e = p
            .symbol("no_such_function_anywhere")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no_such_function_anywhere") && e.contains("this process"),
            "{e}"
        );
        assert!(e.contains("NativeLibrary::open"), "the hint: {e}");
        assert!(matches!(p.symbol("a\0b"), Err(NativeError::BadName(_))));
        // SAFETY: no such library: nothing is loaded.
        let e = unsafe { NativeLibrary::open("libno_such_library_here.so") }.unwrap_err();
        assert!(e.to_string().contains("libno_such_library_here.so"), "{e}");
        let e = NativeLibrary::find(&[&p, &p], "nor_this_one")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nor_this_one"), "{e}");
    }
}
