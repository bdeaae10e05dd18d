//! Function signatures: built in code or parsed from the text grammar.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use super::error::{AbiError, Result};
use super::types::{Scalar, StructType, Type};

/// Most parameters a signature may have (variadic arguments included).
pub const MAX_PARAMS: usize = 64;

// A signature keeps its number of fixed parameters in a byte.
const _: () = assert!(MAX_PARAMS <= u8::MAX as usize);

/// A C function signature.
///
/// A variadic signature comes in two forms: the *declared* form
/// `(ptr,...)->i32`, and a *call-site* form that also lists the variadic
/// arguments of one call (after C's default argument promotions), made with
/// [`Signature::with_varargs`] and written `(ptr,...,f64,i64)->i32` (an
/// extension of the grammar: types after `...` are the call's variadic ones).
pub struct Signature {
    /// Shared by every clone: a registry interning a new signature keeps a
    /// clone, so the parameters are stored once, not copied per id.
    params: Arc<[Type]>,
    ret: Option<Type>,
    /// Number of fixed parameters when variadic (at most `MAX_PARAMS`, so a
    /// byte: with the 32-bit hash below, a signature is 48 bytes, not 56, and
    /// a registry keeps one per id).
    fixed: Option<u8>,
    /// A hash of the three fields above, worked out once when the signature
    /// is made: interning and cached lookups by signature hash it every time.
    /// 32 bits are plenty for tables of millions (equal hashes are always
    /// followed by a full comparison).
    hash: u32,
    /// The id a registry gave this very signature (or the one it was cloned
    /// from), with that registry's serial number: `serial << 32 | id`, 0 for
    /// none. Not part of the signature's value (equality and hash ignore
    /// it); see `Registry::intern`.
    interned: AtomicU64,
}

// A registry keeps one signature per id: keep it at 48 bytes.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Signature>() == 48);

impl Clone for Signature {
    fn clone(&self) -> Signature {
        Signature {
            params: Arc::clone(&self.params),
            ret: self.ret.clone(),
            fixed: self.fixed,
            hash: self.hash,
            // A clone has the same value, so the same id in that registry.
            interned: AtomicU64::new(self.interned.load(Ordering::Acquire)),
        }
    }
}

impl PartialEq for Signature {
    fn eq(&self, other: &Signature) -> bool {
        self.hash == other.hash
            && self.fixed == other.fixed
            && self.ret == other.ret
            && self.params == other.params
    }
}

impl Eq for Signature {}

impl std::hash::Hash for Signature {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("params", &self.params)
            .field("ret", &self.ret)
            .field("fixed", &self.fixed)
            .finish()
    }
}

impl Signature {
    /// The one place a signature is made (its hash worked out).
    fn make(params: Arc<[Type]>, ret: Option<Type>, fixed: Option<usize>) -> Signature {
        use std::hash::BuildHasher;
        let hash = rustc_hash::FxBuildHasher.hash_one((&params[..], &ret, fixed));
        Signature {
            params,
            ret,
            // Every constructor checks the count against MAX_PARAMS first.
            fixed: fixed.map(|f| f as u8),
            // Both halves folded in, so every bit of the full hash counts.
            hash: (hash ^ hash >> 32) as u32,
            interned: AtomicU64::new(0),
        }
    }

    /// Heap bytes this signature holds: its parameter list (shared by its
    /// clones) and its types' descriptions.
    pub(super) fn heap_bytes(&self) -> usize {
        2 * size_of::<usize>()
            + self.params.len() * size_of::<Type>()
            + self
                .params
                .iter()
                .chain(&self.ret)
                .map(Type::heap_bytes)
                .sum::<usize>()
    }

    /// Where a registry notes the id it gave this signature (`Registry::intern`).
    pub(super) fn interned(&self) -> &AtomicU64 {
        &self.interned
    }

    /// A non-variadic signature.
    ///
    /// # Errors
    /// [`AbiError::TooManyParams`].
    pub fn new(params: Vec<Type>, ret: Option<Type>) -> Result<Signature> {
        check_count(params.len())?;
        Ok(Signature::make(params.into(), ret, None))
    }

    /// A variadic signature in its declared form: `params` are the fixed ones.
    ///
    /// # Errors
    /// [`AbiError::TooManyParams`].
    pub fn new_variadic(params: Vec<Type>, ret: Option<Type>) -> Result<Signature> {
        check_count(params.len())?;
        let fixed = Some(params.len());
        Ok(Signature::make(params.into(), ret, fixed))
    }

    /// Starts a [`SignatureBuilder`].
    pub fn builder() -> SignatureBuilder {
        SignatureBuilder::default()
    }

    /// Parses a signature in the text grammar written in the
    /// [module docs](crate::abi#the-signature-text) (spaces around tokens
    /// allowed; variadic call-site types may follow `...`).
    ///
    /// # Errors
    /// [`AbiError::Parse`] with the byte offset and what was expected there, or
    /// any validation error of the types ([`AbiError::UnpromotedVararg`] for
    /// a call-site variadic type that C would have promoted).
    ///
    /// # Examples
    /// ```
    /// use tierbridge::abi::Signature;
    /// let sig = Signature::parse("(i32, {f32,f32}, ...) -> f64")?;
    /// assert_eq!(sig.to_string(), "(i32,{f32,f32},...)->f64");
    /// # Ok::<(), tierbridge::abi::AbiError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Signature> {
        let mut p = Parser { text, pos: 0 };
        let sig = p.signature()?;
        p.end()?;
        Ok(sig)
    }

    /// Parses a bare parameter list `(T,T,...)` (the `call_types` form) into types.
    ///
    /// # Errors
    /// As [`Signature::parse`].
    pub fn parse_param_list(text: &str) -> Result<Vec<Type>> {
        let mut p = Parser { text, pos: 0 };
        let (params, fixed) = p.params()?;
        p.end()?;
        if fixed.is_some() {
            return Err(AbiError::Parse {
                offset: text.find("...").unwrap_or(0),
                expected: "a concrete type (call_types lists promoted types, not `...`)",
                found: "`...`".into(),
            });
        }
        Ok(params.into_vec())
    }

    /// The parameters (fixed, then any call-site variadic ones).
    pub fn params(&self) -> &[Type] {
        &self.params
    }

    /// The result type; `None` is `void`.
    pub fn ret(&self) -> Option<&Type> {
        self.ret.as_ref()
    }

    /// True if the signature has `...`.
    pub fn is_variadic(&self) -> bool {
        self.fixed.is_some()
    }

    /// Number of fixed parameters (all of them when not variadic).
    pub fn fixed_count(&self) -> usize {
        self.fixed.map_or(self.params.len(), |f| f as usize)
    }

    /// True for a variadic signature that already lists a call's variadic types.
    pub fn has_call_varargs(&self) -> bool {
        self.fixed.is_some_and(|f| (f as usize) < self.params.len())
    }

    /// The declared form of a call-site signature (variadic types dropped).
    pub fn declared(&self) -> Signature {
        Signature::make(
            self.params[..self.fixed_count()].into(),
            self.ret.clone(),
            self.fixed.map(|f| f as usize),
        )
    }

    /// The call-site signature for one call of a variadic function: the fixed
    /// parameters followed by `varargs`, which must already be promoted (no
    /// `f32`, no integer narrower than 32 bits, no `bool`).
    ///
    /// # Errors
    /// [`AbiError::NotVariadic`], [`AbiError::VarargsAlreadyGiven`],
    /// [`AbiError::UnpromotedVararg`], [`AbiError::TooManyParams`].
    pub fn with_varargs(&self, varargs: &[Type]) -> Result<Signature> {
        let Some(fixed) = self.fixed.map(|f| f as usize) else {
            return Err(AbiError::NotVariadic(self.to_string()));
        };
        if self.has_call_varargs() {
            return Err(AbiError::VarargsAlreadyGiven(self.to_string()));
        }
        check_count(fixed + varargs.len())?;
        check_promoted(fixed, varargs)?;
        // One exact allocation (the chain's length is known).
        let params = self.params.iter().chain(varargs).cloned().collect();
        Ok(Signature::make(params, self.ret.clone(), Some(fixed)))
    }

    /// Number of interpreter slots the arguments take (see ABI.md, "Slots").
    pub fn arg_slots(&self) -> usize {
        self.params.iter().map(|t| t.slots() as usize).sum()
    }

    /// Number of interpreter slots the result takes (0 for `void`).
    pub fn ret_slots(&self) -> usize {
        self.ret.as_ref().map_or(0, |t| t.slots() as usize)
    }
}

/// Call-site variadic types (parameters `fixed..`) must be promoted already:
/// no `f32`, no integer narrower than 32 bits, no `bool`.
fn check_promoted(fixed: usize, varargs: &[Type]) -> Result<()> {
    for (i, ty) in varargs.iter().enumerate() {
        if let Type::Scalar(s) = ty
            && matches!(
                s,
                Scalar::F32 | Scalar::I8 | Scalar::U8 | Scalar::I16 | Scalar::U16 | Scalar::Bool
            )
        {
            return Err(AbiError::UnpromotedVararg {
                index: fixed + i,
                ty: s.to_string(),
            });
        }
    }
    Ok(())
}

fn check_count(count: usize) -> Result<()> {
    if count > MAX_PARAMS {
        return Err(AbiError::TooManyParams {
            count,
            max: MAX_PARAMS,
        });
    }
    Ok(())
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        let fixed = self.fixed_count();
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if !std::mem::take(&mut first) {
                f.write_str(",")?;
            }
            Ok(())
        };
        for ty in &self.params[..fixed] {
            sep(f)?;
            write!(f, "{ty}")?;
        }
        if self.fixed.is_some() {
            sep(f)?;
            f.write_str("...")?;
            for ty in &self.params[fixed..] {
                write!(f, ",{ty}")?;
            }
        }
        f.write_str(")->")?;
        match &self.ret {
            Some(t) => write!(f, "{t}"),
            None => f.write_str("void"),
        }
    }
}

impl FromStr for Signature {
    type Err = AbiError;
    fn from_str(s: &str) -> Result<Signature> {
        Signature::parse(s)
    }
}

/// Builds a [`Signature`] in code.
///
/// ```
/// use tierbridge::abi::{Scalar, Signature, StructType};
/// let pair = StructType::new(vec![(Scalar::F32.into(), None), (Scalar::F32.into(), None)], false)?;
/// let sig = Signature::builder()
///     .param(Scalar::I32)
///     .param(pair)
///     .variadic()
///     .returns(Scalar::F64)
///     .build()?;
/// assert_eq!(sig, "(i32,{f32,f32},...)->f64".parse()?);
/// # Ok::<(), tierbridge::abi::AbiError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct SignatureBuilder {
    params: Vec<Type>,
    ret: Option<Type>,
    variadic: bool,
}

impl SignatureBuilder {
    /// Appends a parameter.
    pub fn param(mut self, ty: impl Into<Type>) -> Self {
        self.params.push(ty.into());
        self
    }

    /// Sets the result type (default `void`).
    pub fn returns(mut self, ty: impl Into<Type>) -> Self {
        self.ret = Some(ty.into());
        self
    }

    /// Marks the signature variadic (`...` after the parameters so far and any added later).
    pub fn variadic(mut self) -> Self {
        self.variadic = true;
        self
    }

    /// Finishes the signature.
    ///
    /// # Errors
    /// [`AbiError::TooManyParams`].
    pub fn build(self) -> Result<Signature> {
        if self.variadic {
            Signature::new_variadic(self.params, self.ret)
        } else {
            Signature::new(self.params, self.ret)
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self
            .text
            .as_bytes()
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn found(&self) -> String {
        let rest = &self.text[self.pos..];
        match rest.chars().next() {
            None => "end of input".into(),
            Some(_) => {
                let tok: String = rest.chars().take(12).collect();
                format!("{tok:?}")
            }
        }
    }

    fn fail<T>(&self, expected: &'static str) -> Result<T> {
        Err(AbiError::Parse {
            offset: self.pos,
            expected,
            found: self.found(),
        })
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.text[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str, expected: &'static str) -> Result<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    fn end(&mut self) -> Result<()> {
        self.ws();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            self.fail("end of input")
        }
    }

    fn word(&mut self) -> &str {
        self.ws();
        let start = self.pos;
        while self
            .text
            .as_bytes()
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn signature(&mut self) -> Result<Signature> {
        let (params, fixed) = self.params()?;
        self.expect("->", "`->`")?;
        self.ws();
        let save = self.pos;
        let ret = if self.word() == "void" {
            None
        } else {
            self.pos = save;
            Some(self.ty(0)?)
        };
        check_count(params.len())?;
        // Types after `...` are a call site's, as `with_varargs` takes them.
        if let Some(fixed) = fixed {
            check_promoted(fixed, &params[fixed..])?;
        }
        // One exact allocation for the parameters, wherever they were kept.
        Ok(Signature::make(params[..].into(), ret, fixed))
    }

    /// The parameter list, kept on the stack while parsed (no allocation
    /// at all up to 16 parameters, none grown one at a time).
    fn params(&mut self) -> Result<(SmallVec<[Type; 16]>, Option<usize>)> {
        self.expect("(", "`(`")?;
        let mut params = SmallVec::new();
        let mut fixed = None;
        if self.eat(")") {
            return Ok((params, fixed));
        }
        loop {
            if self.eat("...") {
                if fixed.is_some() {
                    return self.fail("a type (`...` appears once)");
                }
                fixed = Some(params.len());
            } else {
                params.push(self.param()?);
            }
            if self.eat(")") {
                return Ok((params, fixed));
            }
            self.expect(",", "`,` or `)`")?;
        }
    }

    fn param(&mut self) -> Result<Type> {
        self.ws();
        let save = self.pos;
        if self.word() == "void" {
            self.pos = save;
            return Err(AbiError::VoidParam);
        }
        self.pos = save;
        self.ty(0)
    }

    fn ty(&mut self, depth: usize) -> Result<Type> {
        self.ws();
        let start = self.pos;
        let word = self.word().to_owned();
        if let Some(s) = Scalar::from_name(&word) {
            return Ok(Type::Scalar(s));
        }
        let packed = word == "packed";
        if !packed {
            self.pos = start;
        }
        self.ws();
        if !self.text[self.pos..].starts_with('{') {
            return self
                .fail("a type (i8 u8 i16 u16 i32 u32 i64 u64 bool f32 f64 ptr, `{` or `packed{`)");
        }
        if depth >= super::types::MAX_NESTING {
            return Err(AbiError::NestingTooDeep {
                max: super::types::MAX_NESTING,
            });
        }
        self.pos += 1;
        let mut fields = Vec::new();
        if self.eat("}") {
            return Err(AbiError::EmptyStruct);
        }
        loop {
            if self.eat("[") {
                let elem = self.ty(depth + 1)?;
                self.expect(";", "`;` in an array field `[T;N]`")?;
                self.ws();
                let digits_at = self.pos;
                let n = self.word();
                let count: u32 = match n.parse() {
                    Ok(c) if n.bytes().all(|b| b.is_ascii_digit()) => c,
                    _ => {
                        self.pos = digits_at;
                        return self.fail("an array length (a decimal number)");
                    }
                };
                self.expect("]", "`]`")?;
                fields.push((elem, Some(count)));
            } else {
                fields.push((self.ty(depth + 1)?, None));
            }
            if self.eat("}") {
                break;
            }
            self.expect(",", "`,` or `}`")?;
        }
        Ok(StructType::new(fields, packed)?.into())
    }
}
