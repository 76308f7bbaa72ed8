//! A 1 KiB "billion laughs" YAML file, shared by the end-to-end test and the benchmark.

/// Nine levels of ten aliases each would expand to 10^9 nodes. It sits in a `spec` written
/// before `kind`, the one place where the loader buffers a whole value, which makes it the
/// worst case for the loader.
pub fn billion_laughs() -> String {
    let mut doc =
        String::from("spec:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        doc.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    doc.push_str("kind: Service\n");
    doc
}
