// The crate's cfg for "this build generates machine code",
// `tierbridge_codegen`, for the targets' shared code in common/ (which the
// crate's tests also compile): the crate's own build script, included.

include!("../build.rs");
