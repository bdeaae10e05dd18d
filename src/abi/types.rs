//! C types of the signature grammar and their x86-64 C layout.

use std::fmt;
use std::sync::Arc;

use super::error::{AbiError, Result};

/// Deepest struct nesting accepted (the outermost struct is depth 1).
pub const MAX_NESTING: usize = 16;
/// Largest struct size accepted, in bytes.
pub const MAX_STRUCT_SIZE: u32 = 1 << 16;

/// A scalar C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scalar {
    /// `int8_t`
    I8,
    /// `uint8_t`
    U8,
    /// `int16_t`
    I16,
    /// `uint16_t`
    U16,
    /// `int32_t`
    I32,
    /// `uint32_t`
    U32,
    /// `int64_t`
    I64,
    /// `uint64_t`
    U64,
    /// `_Bool` (one byte, 0 or 1)
    Bool,
    /// `float` (IEEE-754 binary32)
    F32,
    /// `double` (IEEE-754 binary64)
    F64,
    /// any data or function pointer
    Ptr,
}

impl Scalar {
    /// Every scalar, in grammar order.
    pub const ALL: [Scalar; 12] = [
        Scalar::I8,
        Scalar::U8,
        Scalar::I16,
        Scalar::U16,
        Scalar::I32,
        Scalar::U32,
        Scalar::I64,
        Scalar::U64,
        Scalar::Bool,
        Scalar::F32,
        Scalar::F64,
        Scalar::Ptr,
    ];

    /// Size in bytes, which is also the alignment.
    pub const fn size(self) -> u32 {
        match self {
            Scalar::I8 | Scalar::U8 | Scalar::Bool => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::I64 | Scalar::U64 | Scalar::F64 | Scalar::Ptr => 8,
        }
    }

    /// True for `f32` and `f64`.
    pub const fn is_float(self) -> bool {
        matches!(self, Scalar::F32 | Scalar::F64)
    }

    /// True for the signed integer types.
    pub const fn is_signed(self) -> bool {
        matches!(self, Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64)
    }

    /// The grammar's name of the type.
    pub const fn name(self) -> &'static str {
        match self {
            Scalar::I8 => "i8",
            Scalar::U8 => "u8",
            Scalar::I16 => "i16",
            Scalar::U16 => "u16",
            Scalar::I32 => "i32",
            Scalar::U32 => "u32",
            Scalar::I64 => "i64",
            Scalar::U64 => "u64",
            Scalar::Bool => "bool",
            Scalar::F32 => "f32",
            Scalar::F64 => "f64",
            Scalar::Ptr => "ptr",
        }
    }

    /// Looks a scalar up by its grammar name.
    pub fn from_name(name: &str) -> Option<Scalar> {
        Scalar::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Normalizes the low `size()` bytes of `raw` into a slot: integers sign- or
    /// zero-extended to 64 bits as the type says, `bool` zero-extended from its low
    /// byte, `f32` as raw bits in the low 32 bits with the high bits zero, `f64` and
    /// `ptr` unchanged. This is the slot convention of ABI.md.
    #[inline]
    pub const fn to_slot(self, raw: u64) -> u64 {
        self.slot_ext().apply(raw)
    }

    /// How a raw value of this type becomes its slot, as data: [`Scalar::to_slot`]
    /// is `slot_ext().apply(raw)`; code that extends the same type on every call
    /// keeps the `SlotExt` and applies it without looking at the type again.
    #[inline]
    pub const fn slot_ext(self) -> SlotExt {
        // A 64-bit type's is the identity, `SlotExt::NONE` itself.
        let bits = 8 * self.size();
        if bits == 64 {
            return SlotExt::NONE;
        }
        SlotExt {
            mask: (1 << bits) - 1,
            sign: if self.is_signed() { 1 << (bits - 1) } else { 0 },
        }
    }
}

/// The slot convention for one scalar type: keep its low bits (`mask`),
/// sign-extended from its top bit (`sign`) or zero-extended when `sign` is 0
/// (see [`Scalar::slot_ext`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotExt {
    mask: u64,
    sign: u64,
}

impl SlotExt {
    /// The identity: 64-bit values, and anything that is not a scalar.
    pub const NONE: SlotExt = SlotExt { mask: !0, sign: 0 };

    /// The slot of `raw`: its low bits extended, with three plain ALU
    /// operations and no branch on the type: flipping the sign bit and
    /// subtracting it again borrows through every bit above it exactly when
    /// it was set.
    #[inline(always)]
    pub const fn apply(self, raw: u64) -> u64 {
        ((raw & self.mask) ^ self.sign).wrapping_sub(self.sign)
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter or result type: a scalar or a struct passed by value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// A scalar.
    Scalar(Scalar),
    /// A struct by value.
    Struct(Arc<StructType>),
}

impl Type {
    /// Heap bytes this type's description holds (a struct's, its fields'
    /// and nested structs'; a struct shared by several types is counted in
    /// each), for the registry's statistics.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Type::Scalar(_) => 0,
            // The Arc's two counts, the struct, its fields.
            Type::Struct(st) => {
                2 * size_of::<usize>()
                    + size_of::<StructType>()
                    + st.fields.capacity() * size_of::<Field>()
                    + st.fields.iter().map(|f| f.ty.heap_bytes()).sum::<usize>()
            }
        }
    }

    /// Size in bytes (C `sizeof`).
    pub fn size(&self) -> u32 {
        match self {
            Type::Scalar(s) => s.size(),
            Type::Struct(st) => st.size,
        }
    }

    /// Alignment in bytes (C `_Alignof`).
    pub fn align(&self) -> u32 {
        match self {
            Type::Scalar(s) => s.size(),
            Type::Struct(st) => st.align,
        }
    }

    /// The scalar, if this is one.
    pub fn as_scalar(&self) -> Option<Scalar> {
        match self {
            Type::Scalar(s) => Some(*s),
            Type::Struct(_) => None,
        }
    }

    /// Number of 8-byte interpreter slots a value of this type occupies.
    pub fn slots(&self) -> u32 {
        match self {
            // Every scalar is at most 8 bytes: one slot, without a size.
            Type::Scalar(_) => 1,
            Type::Struct(st) => st.size.div_ceil(8),
        }
    }

    /// Every scalar inside the value with its byte offset from the start of the
    /// value, in memory order (struct fields and array elements expanded).
    pub fn flatten(&self) -> Vec<(u32, Scalar)> {
        let mut out = Vec::new();
        self.flatten_into(0, &mut out);
        out
    }

    fn flatten_into(&self, base: u32, out: &mut Vec<(u32, Scalar)>) {
        match self {
            Type::Scalar(s) => out.push((base, *s)),
            Type::Struct(st) => {
                for field in &st.fields {
                    let stride = field.ty.size();
                    for i in 0..field.count.unwrap_or(1) {
                        field.ty.flatten_into(base + field.offset + i * stride, out);
                    }
                }
            }
        }
    }

    /// The same type with every `packed` removed (the natural C layout).
    ///
    /// # Errors
    /// [`AbiError::StructTooLarge`] when the natural layout outgrows the limit.
    pub fn unpacked(&self) -> Result<Type> {
        match self {
            Type::Scalar(_) => Ok(self.clone()),
            Type::Struct(st) => {
                let fields = st
                    .fields
                    .iter()
                    .map(|f| Ok((f.ty.unpacked()?, f.count)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Type::Struct(Arc::new(StructType::new(fields, false)?)))
            }
        }
    }

    pub(crate) fn depth(&self) -> usize {
        match self {
            Type::Scalar(_) => 0,
            Type::Struct(st) => 1 + st.fields.iter().map(|f| f.ty.depth()).max().unwrap_or(0),
        }
    }
}

impl From<Scalar> for Type {
    fn from(s: Scalar) -> Type {
        Type::Scalar(s)
    }
}

impl From<StructType> for Type {
    fn from(s: StructType) -> Type {
        Type::Struct(Arc::new(s))
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Scalar(s) => s.fmt(f),
            Type::Struct(st) => st.fmt(f),
        }
    }
}

/// One field of a struct: a type, or a fixed-size array of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    /// The field's type (the element type for an array).
    pub ty: Type,
    /// `Some(n)` for an array field `[ty; n]`.
    pub count: Option<u32>,
    /// Byte offset from the start of the enclosing struct.
    pub offset: u32,
}

/// A struct type with its C layout computed (x86-64 rules, FORMAT.md section 2.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StructType {
    fields: Vec<Field>,
    packed: bool,
    size: u32,
    align: u32,
}

impl StructType {
    /// Lays out a struct from `(type, array count)` fields.
    ///
    /// # Errors
    /// [`AbiError::EmptyStruct`], [`AbiError::EmptyArray`],
    /// [`AbiError::NestingTooDeep`] or [`AbiError::StructTooLarge`].
    pub fn new(fields: Vec<(Type, Option<u32>)>, packed: bool) -> Result<StructType> {
        if fields.is_empty() {
            return Err(AbiError::EmptyStruct);
        }
        let mut offset: u64 = 0;
        let mut align = 1;
        let mut laid = Vec::with_capacity(fields.len());
        for (ty, count) in fields {
            if ty.depth() + 1 > MAX_NESTING {
                return Err(AbiError::NestingTooDeep { max: MAX_NESTING });
            }
            if count == Some(0) {
                return Err(AbiError::EmptyArray);
            }
            let field_align = if packed { 1 } else { ty.align() };
            offset = offset.next_multiple_of(u64::from(field_align));
            let field_size = u64::from(ty.size()) * u64::from(count.unwrap_or(1));
            laid.push(Field {
                ty,
                count,
                offset: offset as u32,
            });
            offset += field_size;
            if offset > u64::from(MAX_STRUCT_SIZE) {
                return Err(AbiError::StructTooLarge {
                    max: MAX_STRUCT_SIZE,
                });
            }
            align = align.max(field_align);
        }
        let size = offset.next_multiple_of(u64::from(align)) as u32;
        Ok(StructType {
            fields: laid,
            packed,
            size,
            align,
        })
    }

    /// The fields with their offsets.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// True for `packed{...}` (`__attribute__((packed))`).
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// Size in bytes, tail padding included.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Alignment in bytes.
    pub fn align(&self) -> u32 {
        self.align
    }
}

impl fmt::Display for StructType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.packed {
            f.write_str("packed")?;
        }
        f.write_str("{")?;
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match field.count {
                Some(n) => write!(f, "[{};{}]", field.ty, n)?,
                None => write!(f, "{}", field.ty)?,
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot convention, worked out by hand for each type from one raw
    /// value whose low byte, half-word and word all have their sign bit set.
    #[test]
    fn to_slot_extends_every_scalar_as_abi_md_says() {
        let (set, clear) = (0x0123_4567_89ab_cdef_u64, 0xfedc_ba98_7654_3210_u64);
        let signs_set = [
            (Scalar::I8, 0xffff_ffff_ffff_ffef),
            (Scalar::U8, 0xef),
            (Scalar::Bool, 0xef),
            (Scalar::I16, 0xffff_ffff_ffff_cdef),
            (Scalar::U16, 0xcdef),
            (Scalar::I32, 0xffff_ffff_89ab_cdef),
            (Scalar::U32, 0x89ab_cdef),
            (Scalar::F32, 0x89ab_cdef),
        ];
        // Sign bits clear this time: signed types zero-extend too.
        let signs_clear = [
            (Scalar::I8, 0x10),
            (Scalar::U8, 0x10),
            (Scalar::Bool, 0x10),
            (Scalar::I16, 0x3210),
            (Scalar::U16, 0x3210),
            (Scalar::I32, 0x7654_3210),
            (Scalar::U32, 0x7654_3210),
            (Scalar::F32, 0x7654_3210),
        ];
        for (raw, narrow) in [(set, signs_set), (clear, signs_clear)] {
            // 64-bit scalars keep every bit.
            let wide = [Scalar::I64, Scalar::U64, Scalar::F64, Scalar::Ptr].map(|s| (s, raw));
            assert_eq!(narrow.len() + wide.len(), Scalar::ALL.len());
            for (s, w) in narrow.into_iter().chain(wide) {
                assert_eq!(s.to_slot(raw), w, "{s}");
            }
        }
        let raw = clear;
        assert_eq!(SlotExt::NONE.apply(raw), raw);
        for s in [Scalar::I64, Scalar::U64, Scalar::F64, Scalar::Ptr] {
            assert_eq!(s.slot_ext(), SlotExt::NONE, "{s}");
        }
    }
}
