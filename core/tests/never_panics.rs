//! Property tests: no input makes a reader panic. Inputs are CSV-shaped byte soup
//! built from the tokens real files contain, so the generator reaches deep into the
//! parsers (headers that match, numbers, timestamps, empty cells, odd delimiters).

use greenfill_core::data::{CarbonOptions, JobFormat, UsageFormat, UsageOptions, read_carbon, read_jobs, read_usage};
use proptest::prelude::*;

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("NaN".to_owned()),
        Just("-1".to_owned()),
        Just("1e308".to_owned()),
        Just("2022-01-01 00:00:00+00:00".to_owned()),
        Just("2022-01-01T01:00:00Z".to_owned()),
        Just("Terminated".to_owned()),
        Just("m_1".to_owned()),
        Just("4GiB".to_owned()),
        Just("2h".to_owned()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        "[ -~]{0,12}",
    ]
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("timestamp,WND,avg_CI".to_owned()),
        Just("Time,Carbon Intensity".to_owned()),
        Just("timestamp,cpu_usage,assigned_mem".to_owned()),
        Just("avg_cpu,avg_mem".to_owned()),
        Just("Timestamp [ms];\tCPU cores;\tCPU usage [%]".to_owned()),
        Just("arrival_time,length,cpus".to_owned()),
        Just("arrival,duration,cpus,memory,deadline,pausable,id".to_owned()),
        Just("task_create_time, task_end_time, job_id, task_id,number_of_instances, status, number_of_cpus_requested_per_instance_in_the_task,normalized_memory_requested_per_instance_in_the_task".to_owned()),
        Just(String::new()),
        "[ -~]{0,30}",
    ]
}

fn file() -> impl Strategy<Value = Vec<u8>> {
    (
        header(),
        prop::collection::vec(prop::collection::vec(cell(), 0..9), 0..12),
        prop_oneof![Just(","), Just(";"), Just(";\t")],
    )
        .prop_map(|(h, rows, sep)| {
            let mut s = h;
            s.push('\n');
            for r in rows {
                s.push_str(&r.join(sep));
                s.push('\n');
            }
            s.into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn carbon_reader_never_panics(bytes in file()) {
        let _ = read_carbon("p.csv", bytes.as_slice(), &CarbonOptions::default());
    }

    #[test]
    fn usage_reader_never_panics(bytes in file(), fmt in 0..6u8, name in prop_oneof![Just("x_300_seconds.csv"), Just("x.csv"), Just("Hourly.csv")]) {
        let format = [UsageFormat::Auto, UsageFormat::Alibaba2018Machines, UsageFormat::BitbrainsVm, UsageFormat::Aggregate, UsageFormat::Long, UsageFormat::PrometheusJson][usize::from(fmt)];
        let _ = read_usage(name, bytes.as_slice(), &UsageOptions { format, ..UsageOptions::default() });
    }

    #[test]
    fn job_reader_never_panics(bytes in file()) {
        let _ = read_jobs("p.csv", bytes.as_slice(), JobFormat::Auto);
    }

    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = read_carbon("p.csv", bytes.as_slice(), &CarbonOptions::default());
        let _ = read_usage("p.csv", bytes.as_slice(), &UsageOptions::default());
        let _ = read_jobs("p.csv", bytes.as_slice(), JobFormat::Auto);
    }

    #[test]
    fn a_read_series_is_regular_and_finite(values in prop::collection::vec(prop_oneof![Just(None), (0.0..1000.0f64).prop_map(Some)], 1..50)) {
        let mut s = String::from("timestamp,avg_CI\n");
        for (i, v) in values.iter().enumerate() {
            s.push_str(&format!("{},{}\n", 1_640_995_200 + 3600 * i, v.map(|v| v.to_string()).unwrap_or_default()));
        }
        match read_carbon("p.csv", s.as_bytes(), &CarbonOptions { step: Some(3600), ..CarbonOptions::default() }) {
            Ok(t) => {
                prop_assert_eq!(t.series.values.len(), values.len());
                prop_assert!(t.series.values.iter().all(|v| v.is_finite()));
                prop_assert_eq!(t.series.filled, values.iter().filter(|v| v.is_none()).count());
            }
            Err(e) => prop_assert!(values.iter().all(Option::is_none), "{e}"),
        }
    }
}

/// Found by `usage_reader_never_panics` in CI: two timestamps 2^62 s apart made
/// the reader ask for 10^14 bytes and abort. A span past MAX_POINTS is an error.
#[test]
fn a_span_no_file_can_mean_is_refused_not_allocated() {
    let text = "timestamp,cpu_usage,assigned_mem\n0,1,1\n300,1,1\n600,1,1\n4611686018427387904,2,2\n";
    let e = read_usage("x_300_seconds.csv", text.as_bytes(), &UsageOptions::default()).unwrap_err().to_string();
    assert!(e.contains("more than 50000000 values"), "{e}");
    let carbon = "timestamp,avg_CI\n0,100\n4611686018427387904,200\n";
    let e = read_carbon("c.csv", carbon.as_bytes(), &CarbonOptions { step: Some(3600), ..CarbonOptions::default() });
    assert!(e.unwrap_err().to_string().contains("more than 50000000 values"));
}
