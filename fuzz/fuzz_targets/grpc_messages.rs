#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| etcd_rs::fuzzing::grpc_messages(data));
