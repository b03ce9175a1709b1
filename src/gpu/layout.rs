//! The one contract between a kernel's Rust side and its WGSL: binding 0 is the uniform
//! parameter struct, bindings 1.. are the storage buffers in the order `launch` gets them.
//! Parameter structs are declared once with `uniform!`, which records their field layout; every
//! shader variant is reflected with naga when it is first built (native builds) and refused
//! unless its uniform members sit where the Rust fields do, under the same names, and it
//! declares exactly the storage bindings the launch passes.
//!
//! Naming: a Rust array `s: [u32; 3]` stands for WGSL members `s0`, `s1`, `s2`; a WGSL member
//! whose name starts with `_` is padding and may cover any Rust field (that shader ignores it).

use crate::error::{Error, Result};

/// A uniform struct field: its name, byte offset and size in the Rust struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// A kernel parameter struct: plain bytes, with a known field layout.
pub trait Uniform: bytemuck::Pod {
    fn fields() -> Vec<Field>;
}

/// Declares a `#[repr(C)]` parameter struct and its `Uniform` layout from the same tokens, so
/// the layout cannot drift from the struct.
macro_rules! uniform {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name { $($(#[$fmeta])* $field: $ty),* }

        impl $crate::gpu::layout::Uniform for $name {
            fn fields() -> Vec<$crate::gpu::layout::Field> {
                vec![$($crate::gpu::layout::Field {
                    name: stringify!($field),
                    offset: ::core::mem::offset_of!($name, $field),
                    size: ::core::mem::size_of::<$ty>(),
                }),*]
            }
        }
    };
}
pub(crate) use uniform;

/// What a launch hands a kernel: the parameter layout and the number of storage bindings. The
/// fields are a function, not a list: only the first build of a variant reads them, and every
/// dispatch passes this.
pub struct LaunchLayout {
    pub params: fn() -> Vec<Field>,
    pub params_size: usize,
    pub storage: usize,
}

/// Whether each storage binding 1..=n of a preprocessed WGSL variant is read-only, in binding
/// order: what its explicit bind group layout says. Read from the text, since the browser build
/// has no naga; native builds check it against naga's reflection (`check`). Our shaders spell
/// every declaration `@group(0) @binding(N) var<storage, read|read_write> name: …;`.
pub fn storage_access(label: &str, wgsl: &str) -> Result<Vec<bool>> {
    let bad = |message: String| Error::Validation { context: format!("the bindings of {label}"), message };
    let mut found: Vec<(u32, bool)> = Vec::new();
    let mut rest = wgsl;
    while let Some(at) = rest.find("@binding(") {
        rest = &rest[at + "@binding(".len()..];
        let close = rest.find(')').ok_or_else(|| bad("an unclosed @binding(".into()))?;
        let n: u32 = rest[..close].trim().parse().map_err(|_| bad(format!("@binding({})", &rest[..close])))?;
        let var = rest.find("var<").ok_or_else(|| bad(format!("binding {n} declares no var<…>")))?;
        let space = &rest[var + 4..];
        let end = space.find('>').ok_or_else(|| bad(format!("binding {n}: an unclosed var<")))?;
        let parts: Vec<&str> = space[..end].split(',').map(str::trim).collect();
        match parts.as_slice() {
            ["uniform"] if n == 0 => {}
            ["storage"] | ["storage", "read"] if n > 0 => found.push((n, true)),
            ["storage", "read_write"] if n > 0 => found.push((n, false)),
            other => return Err(bad(format!("binding {n} is var<{}>", other.join(", ")))),
        }
    }
    found.sort_unstable();
    if found.iter().enumerate().any(|(i, (n, _))| *n != i as u32 + 1) {
        let ns: Vec<u32> = found.iter().map(|(n, _)| *n).collect();
        return Err(bad(format!("storage bindings {ns:?} are not 1..={}", ns.len())));
    }
    Ok(found.into_iter().map(|(_, read_only)| read_only).collect())
}

/// Checks a preprocessed WGSL variant against what its launches pass. `label` names the variant
/// in the error.
#[cfg(not(target_arch = "wasm32"))]
pub fn check(label: &str, wgsl: &str, want: &LaunchLayout) -> Result<()> {
    let bad = |message: String| Error::Validation { context: format!("the layout of {label}"), message };
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| bad(e.emit_to_string(wgsl)))?;
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).map_err(|e| bad(e.to_string()))?;

    let mut storage = Vec::new();
    let mut read_only = Vec::new();
    let mut uniform = None;
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        let name = var.name.as_deref().unwrap_or("?");
        if rb.group != 0 {
            return Err(bad(format!("`{name}` is in bind group {}, not 0", rb.group)));
        }
        match (rb.binding, var.space) {
            (0, naga::AddressSpace::Uniform) => uniform = Some(var.ty),
            (0, _) => return Err(bad(format!("binding 0 (`{name}`) is not the uniform parameters"))),
            (b, naga::AddressSpace::Storage { access }) => {
                storage.push(b);
                read_only.push((b, !access.contains(naga::StorageAccess::STORE)));
            }
            (b, _) => return Err(bad(format!("binding {b} (`{name}`) is not a storage buffer"))),
        }
    }
    storage.sort_unstable();
    let expected: Vec<u32> = (1..=want.storage as u32).collect();
    if storage != expected {
        return Err(bad(format!("the shader declares storage bindings {storage:?}, the launch passes {expected:?}")));
    }
    read_only.sort_unstable();
    let reflected: Vec<bool> = read_only.into_iter().map(|(_, r)| r).collect();
    let scanned = storage_access(label, wgsl)?;
    if scanned != reflected {
        return Err(bad(format!("the text scan reads access {scanned:?} (read-only), naga {reflected:?}")));
    }
    let ty = uniform.ok_or_else(|| bad("no uniform parameters at binding 0".into()))?;
    let naga::TypeInner::Struct { members, .. } = &module.types[ty].inner else {
        return Err(bad("the uniform at binding 0 is not a struct".into()));
    };
    let span = layouter[ty].size as usize;
    if span != want.params_size {
        return Err(bad(format!("the WGSL struct is {span} bytes, the Rust one {}", want.params_size)));
    }
    let fields = (want.params)();
    for m in members {
        let name = m.name.as_deref().unwrap_or("");
        let (offset, size) = (m.offset as usize, layouter[m.ty].size as usize);
        if name.starts_with('_') {
            continue;
        }
        let field = fields.iter().find(|f| f.offset <= offset && offset < f.offset + f.size);
        let expected = match field {
            Some(f) if f.offset == offset && f.size == size => f.name.to_string(),
            Some(f) if (offset - f.offset) % size == 0 && offset + size <= f.offset + f.size => {
                format!("{}{}", f.name, (offset - f.offset) / size)
            }
            _ => String::new(),
        };
        if expected != name {
            let rust = field.map_or("nothing".to_string(), |f| {
                format!("Rust field `{}` ({} bytes at {})", f.name, f.size, f.offset)
            });
            return Err(bad(format!("member `{name}` ({size} bytes at offset {offset}) meets {rust}")));
        }
    }
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    uniform! {
        struct P {
            n: u32,
            s: [u32; 3],
            eps: f32,
            pad: [u32; 3],
        }
    }

    fn check_src(members: &str, storage: &str, n: usize) -> Result<()> {
        let src = format!(
            "struct Params {{ {members} }}\n@group(0) @binding(0) var<uniform> p: Params;\n{storage}\n\
             @compute @workgroup_size(1) fn main() {{ _ = p.eps; }}"
        );
        check("test", &src, &LaunchLayout { params: P::fields, params_size: std::mem::size_of::<P>(), storage: n })
    }

    const GOOD: &str = "n: u32, s0: u32, s1: u32, s2: u32, eps: f32, _p0: u32, _p1: u32, _p2: u32";
    const TWO: &str = "@group(0) @binding(1) var<storage, read> x: array<f32>;\n\
                       @group(0) @binding(2) var<storage, read_write> y: array<f32>;";

    #[test]
    fn storage_access_is_read_from_the_declarations() {
        let src = format!(
            "@group(0) @binding(0) var<uniform> p: Params;\n{TWO}\n@group(0) @binding(3) var<storage> z: array<f32>;"
        );
        assert_eq!(storage_access("t", &src).unwrap(), vec![true, false, true]);
        let gap = "@group(0) @binding(0) var<uniform> p: P;\n@group(0) @binding(2) var<storage, read> x: array<f32>;";
        let e = storage_access("t", gap).unwrap_err().to_string();
        assert!(e.contains("storage bindings [2] are not 1..=1"), "{e}");
        let e = storage_access("t", "@group(0) @binding(1) var<uniform> q: P;").unwrap_err().to_string();
        assert!(e.contains("binding 1 is var<uniform>"), "{e}");
    }

    #[test]
    fn a_matching_layout_passes() {
        check_src(GOOD, TWO, 2).unwrap();
        // Padding may cover real fields (a shader that ignores them).
        check_src("_a: u32, _b: u32, s1: u32, s2: u32, eps: f32, _p0: u32, _p1: u32, _p2: u32", TWO, 2).unwrap();
    }

    #[test]
    fn every_mismatch_is_named() {
        let err = |members: &str, storage: &str, n: usize| check_src(members, storage, n).unwrap_err().to_string();
        // Fields swapped.
        let e = err("n: u32, s0: u32, s1: u32, s2: u32, _e: f32, eps: f32, _p1: u32, _p2: u32", TWO, 2);
        assert!(e.contains("member `eps` (4 bytes at offset 20) meets Rust field `pad`"), "{e}");
        // Renamed.
        let e = err("n: u32, s1: u32, s2: u32, s3: u32, eps: f32, _p0: u32, _p1: u32, _p2: u32", TWO, 2);
        assert!(e.contains("member `s1` (4 bytes at offset 4)"), "{e}");
        // One member short.
        let e = err("n: u32, s0: u32, s1: u32, s2: u32, eps: f32, _p0: u32, _p1: u32", TWO, 2);
        assert!(e.contains("the WGSL struct is 28 bytes, the Rust one 32"), "{e}");
        // A binding the launch does not pass, and one it passes that the shader lacks.
        let e = err(GOOD, TWO, 3);
        assert!(e.contains("declares storage bindings [1, 2], the launch passes [1, 2, 3]"), "{e}");
        let three = format!("{TWO}\n@group(0) @binding(4) var<storage, read> z: array<f32>;");
        let e = err(GOOD, &three, 2);
        assert!(e.contains("[1, 2, 4]"), "{e}");
    }
}
