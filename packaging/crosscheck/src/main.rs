// Cross-check: the AWS crate reads our EIF (CRC, PCRs) and, rebuilt from the same sections with
// its EifBuilder, writes the same bytes. Usage: eif-crosscheck OUR.eif SCRATCH_DIR [SIGNED.eif]
use aws_nitro_enclaves_image_format::defs::EifIdentityInfo;
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::{EifBuilder, PcrSignatureChecker};
use sha2::{Digest, Sha384};
use std::fs;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ours = &args[1];
    let mut r = EifReader::from_eif(ours.clone()).expect("crate reads our EIF");
    let m = r.get_measurements().expect("measurements");
    println!("crate_reader_crc_ok={}", r.check_crc());
    println!("crate_reader={}", serde_json::to_string(&m).unwrap());
    // Rebuild the same image with the crate's builder from our sections.
    let d = fs::read(ours).unwrap();
    let mut off = 548;
    let tmp = Path::new(&args[2]);
    fs::create_dir_all(tmp).unwrap();
    let (mut cmdline, mut meta, mut rds) = (String::new(), Vec::new(), Vec::new());
    let mut i = 0;
    while off < d.len() {
        let t = u16::from_be_bytes([d[off], d[off + 1]]);
        let size = u64::from_be_bytes(d[off + 4..off + 12].try_into().unwrap()) as usize;
        let data = &d[off + 12..off + 12 + size];
        match t {
            1 => fs::write(tmp.join("kernel"), data).unwrap(),
            2 => cmdline = String::from_utf8(data.to_vec()).unwrap(),
            3 => {
                let p = tmp.join(format!("rd{i}"));
                fs::write(&p, data).unwrap();
                rds.push(p);
                i += 1;
            }
            5 => meta = data.to_vec(),
            _ => {}
        }
        off += 12 + size;
    }
    let info: EifIdentityInfo = serde_json::from_slice(&meta).unwrap();
    let mut b = EifBuilder::new(&tmp.join("kernel"), cmdline, None, Sha384::new(), 0, info);
    for p in &rds {
        b.add_ramdisk(p);
    }
    let out = tmp.join("crate.eif");
    let mut f = fs::File::create(&out).unwrap();
    let bm = b.write_to(&mut f);
    drop(f);
    println!("crate_builder={}", serde_json::to_string(&bm).unwrap());
    println!("identical_bytes={}", fs::read(&out).unwrap() == d);
    // A signed EIF (third argument): the crate checks the COSE signature against the
    // certificate's key and that its payload is this image's PCR0, as `describe-eif` does.
    if let Some(signed) = args.get(3) {
        let mut r = EifReader::from_eif(signed.clone()).expect("crate reads our signed EIF");
        let m = r.get_measurements().expect("measurements");
        println!("signed_crc_ok={}", r.check_crc());
        println!("signed_measurements={}", serde_json::to_string(&m).unwrap());
        let info = r.get_certificate_info(m).expect("certificate info");
        println!("signed_issuer={:?}", info.issuer_name);
        println!("signature_check={}", r.sign_check == Some(true));
        let mut checker = PcrSignatureChecker::from_eif(signed).expect("signature section");
        println!("certificate_verify={:?}", checker.verify());
    }
}
