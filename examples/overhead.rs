//! What a call costs: a markdown table of every mechanism on every shape, in
//! ns per call (median of several interleaved rounds) and as a ratio to a
//! direct call of the same shape measured in the same run.
//!
//! ```text
//! cargo run --release --example overhead -- [--quick] [--plot ratios.svg]
//! ```
//!
//! The last line is `summary: exit_ratio=R1 entry_ratio=R2 exit_vs_libffi=R3
//! entry_vs_libffi=R4`: R1/R2 the worst generated/direct ratios over the
//! all-scalar shapes of at most 8 arguments, R3/R4 the smallest
//! libffi/generated speedups over all shapes.

#[path = "common/measure.rs"]
mod measure;

use std::time::Instant;

use plotters::prelude::*;
use tierbridge::thunks::{BackendKind, Bridge};

fn plot(path: &str, table: &measure::Table) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = measure::SHAPES.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "tierbridge: cost of a call relative to a direct call (log scale)",
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (0.3f64..200f64).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let k = x.round() as usize;
            if (x - k as f64).abs() < 0.01 && k < n {
                measure::SHAPES[k].0.to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("time / direct call")
        .draw()?;
    let colors = [RED, BLUE, MAGENTA, GREEN];
    for (i, m) in [1usize, 2, 3, 4].into_iter().enumerate() {
        let points: Vec<(f64, f64)> = (0..n)
            .filter_map(|k| Some((k as f64, table[m][k]? / table[0][k]?)))
            .collect();
        let color = colors[i];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(measure::MECHANISMS[m])
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart.draw_series(LineSeries::new(
        [(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
        BLACK.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut quick = false;
    let mut plot_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--plot" => plot_path = Some(args.next().ok_or("--plot needs a path")?),
            other => {
                return Err(
                    format!("unknown argument {other:?} (use --quick, --plot PATH)").into(),
                );
            }
        }
    }
    let bridge = Bridge::new(BackendKind::Generated)?;
    if let Some(why) = bridge.fallback_reason() {
        println!("note: {why}; the generated rows are libffi");
    }
    let (iters, rounds) = if quick { (100_000, 5) } else { (1_000_000, 9) };
    let t = Instant::now();
    let table = measure::measure(&bridge, iters, rounds);
    println!(
        "{} calls per cell per round, median of {rounds} interleaved rounds, {:.1} s; ratios are to the direct call of the same shape.\n",
        iters,
        t.elapsed().as_secs_f64()
    );
    print!("{}", measure::markdown(&table));
    if let Some(path) = plot_path {
        plot(&path, &table)?;
        println!("\nchart of the ratios written to {path}");
    }
    let (r1, r2, r3, r4) = measure::summary(&table);
    println!(
        "summary: exit_ratio={r1:.2} entry_ratio={r2:.2} exit_vs_libffi={r3:.1} entry_vs_libffi={r4:.1}"
    );
    Ok(())
}
