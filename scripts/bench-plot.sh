#!/usr/bin/env bash
# Draws the worker CPU per delivery (µs, over the publish window) of every scenario of a bench run
# for the floor, ours and nchan, the median over the repetitions, as grouped bars in an SVG with
# gnuplot. scripts/bench.sh calls it at the end of a run; it can be run again on a run's results.
#
#   scripts/bench-plot.sh build/bench/results.json build/bench/cpu_per_delivery.svg ["title"]
#
# The figures go to the same name with .dat (a scenario a line: scenario floor ours nchan, "-"
# where a server has none, as the floor in idle and the s6 variants). Scenarios come in the order they
# first appear in the results; idle has no CPU per delivery and is left out.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 results.json out.svg [title]" >&2; exit 2; }
results=$1 svg=$2 title=${3:-Worker CPU per delivery}
dat=${svg%.svg}.dat
# shellcheck source=deps.sh
source "$(dirname "$0")/deps.sh"
apt_install jq gnuplot-nox

jq -rs '
    def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def has_cpu: (.server_cpu_us_per_delivery | type) == "number";
    . as $all
    | reduce (.[] | select(has_cpu) | .scenario) as $sc ([]; if any(.[]; . == $sc) then . else . + [$sc] end)
    | .[] as $sc
    | [$sc] + (["floor", "ours", "nchan"] | map(. as $s
        | [$all[] | select(.scenario == $sc and .server == $s and has_cpu) | .server_cpu_us_per_delivery]
        | median // "-"))
    | @tsv' "$results" >"$dat"
[ -s "$dat" ] || { echo "bench-plot: no CPU figures in $results" >&2; exit 1; }

# Single quotes in a title would end gnuplot's string.
title=${title//\'/}
gnuplot <<EOF
set encoding utf8
set terminal svg size 900,480 dynamic font 'sans,12' background rgb 'white'
set output '$svg'
set title '$title'
set datafile missing '-'
set datafile separator '\t'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel 'worker CPU µs per delivery (median)'
set yrange [0:*]
set grid ytics
set key top left
set xtics nomirror
set offsets 0, 0, graph 0.1, 0
# Each bar's figure above it: three bars a cluster, a quarter of a cluster's width apart.
plot '$dat' using 2:xtic(1) title 'floor' linecolor rgb '#999999', \
     '' using 3 title 'ours' linecolor rgb '#1f77b4', \
     '' using 4 title 'nchan' linecolor rgb '#d62728', \
     '' using (\$0 - 0.25):2:(sprintf('%.3g', \$2)) with labels offset 0, 0.7 notitle, \
     '' using (\$0):3:(sprintf('%.3g', \$3)) with labels offset 0, 0.7 notitle, \
     '' using (\$0 + 0.25):4:(sprintf('%.3g', \$4)) with labels offset 0, 0.7 notitle
EOF
echo "plot: $svg (figures in $dat)" >&2
