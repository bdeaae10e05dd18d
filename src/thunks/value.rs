//! Typed values for the checked call path.

use std::ffi::c_void;

use crate::abi::{Scalar, Type};

/// A typed argument or result.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    Void,
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    Bool(bool),
    F32(f32),
    F64(f64),
    Ptr(*const c_void),
    /// A struct's bytes in its C layout (padding included).
    Struct(Vec<u8>),
}

impl Value {
    fn scalar(&self) -> Option<(Scalar, u64)> {
        Some(match *self {
            Value::I8(v) => (Scalar::I8, v as u64),
            Value::U8(v) => (Scalar::U8, v as u64),
            Value::I16(v) => (Scalar::I16, v as u64),
            Value::U16(v) => (Scalar::U16, v as u64),
            Value::I32(v) => (Scalar::I32, v as u64),
            Value::U32(v) => (Scalar::U32, v as u64),
            Value::I64(v) => (Scalar::I64, v as u64),
            Value::U64(v) => (Scalar::U64, v),
            Value::Bool(v) => (Scalar::Bool, v as u64),
            Value::F32(v) => (Scalar::F32, v.to_bits() as u64),
            Value::F64(v) => (Scalar::F64, v.to_bits()),
            Value::Ptr(v) => (Scalar::Ptr, v as usize as u64),
            Value::Void | Value::Struct(_) => return None,
        })
    }

    fn type_name(&self) -> String {
        match self {
            Value::Void => "void".into(),
            Value::Struct(b) => format!("a {}-byte struct", b.len()),
            other => other
                .scalar()
                .map(|(s, _)| s.to_string())
                .unwrap_or_default(),
        }
    }

    /// Writes the value into its slots if its type is `ty`; otherwise returns
    /// the name of its own type.
    pub(crate) fn write_slots(&self, ty: &Type, slots: &mut [u64]) -> Result<(), String> {
        match (ty, self) {
            (Type::Scalar(want), v) if v.scalar().is_some_and(|(s, _)| s == *want) => {
                slots[0] = want.to_slot(v.scalar().map(|(_, bits)| bits).unwrap_or(0));
                Ok(())
            }
            (Type::Struct(st), Value::Struct(bytes)) if bytes.len() == st.size() as usize => {
                for (i, chunk) in bytes.chunks(8).enumerate() {
                    let mut b = [0u8; 8];
                    b[..chunk.len()].copy_from_slice(chunk);
                    slots[i] = u64::from_le_bytes(b);
                }
                Ok(())
            }
            _ => Err(self.type_name()),
        }
    }

    /// Reads a result of type `ty` (`None` = void) from its slots.
    pub(crate) fn from_slots(ty: Option<&Type>, slots: &[u64]) -> Value {
        let Some(ty) = ty else { return Value::Void };
        match ty {
            Type::Struct(st) => {
                let mut bytes: Vec<u8> = slots.iter().flat_map(|s| s.to_le_bytes()).collect();
                bytes.truncate(st.size() as usize);
                Value::Struct(bytes)
            }
            Type::Scalar(s) => {
                let v = s.to_slot(slots[0]);
                match s {
                    Scalar::I8 => Value::I8(v as i8),
                    Scalar::U8 => Value::U8(v as u8),
                    Scalar::I16 => Value::I16(v as i16),
                    Scalar::U16 => Value::U16(v as u16),
                    Scalar::I32 => Value::I32(v as i32),
                    Scalar::U32 => Value::U32(v as u32),
                    Scalar::I64 => Value::I64(v as i64),
                    Scalar::U64 => Value::U64(v),
                    Scalar::Bool => Value::Bool(v & 1 != 0),
                    Scalar::F32 => Value::F32(f32::from_bits(v as u32)),
                    Scalar::F64 => Value::F64(f64::from_bits(v)),
                    Scalar::Ptr => Value::Ptr(v as usize as *const c_void),
                }
            }
        }
    }
}
