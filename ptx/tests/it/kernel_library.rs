//! The embedded library lists every `kernels/*.ptx` file, each file carries the header comment the
//! project asks for, and every kernel is ASCII (ptxas rejects anything else).

use troupe_ptx::kernels::LIBRARY;

#[test]
fn every_kernel_file_is_embedded_and_documented() {
    let dir = crate::common::kernels_dir();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("ptx/kernels exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ptx"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = LIBRARY.iter().map(|f| f.file.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded);
    for f in LIBRARY {
        assert!(f.source.is_ascii(), "{} is not ASCII", f.file);
        let head: String = f
            .source
            .lines()
            .take_while(|l| l.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for word in ["Launch", "hared memory"] {
            assert!(
                head.contains(word),
                "{}: header comment lacks `{word}`",
                f.file
            );
        }
    }
}
