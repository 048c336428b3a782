# Limits in the event record (issue 10, point 12). An event's record counts its channels in 32
# bits: one publish to 1,024 names, each covered by 64 prefix patterns that streams hold, targets
# 1,024 + 65,536 + 1 channels (more than 16 bits hold), and every stream still gets each event
# once, byte-exact, in order. And publishing looks up only the patterns that could cover a name
# (a `*` after each of its prefixes) once there are many: with those 65,537 pattern channels in
# place, single-name publishes reach exactly the streams whose patterns cover the name. Their
# time is printed (diag), never asserted.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use POSIX ();
use SSETest;
use SSEExpect qw(frame frames first_difference);

my $NAMES = 1024;     # sse_max_channels at most
my $PSTREAMS = 64;    # pattern streams: stream j asks for the prefix of length 5 + j of every name
my $T0 = time;
my %phase;            # seconds each phase took, printed at the end

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_subscribe_patterns on;
            sse_max_channels 1024;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_max_channels 1024;
            sse_history 0;
        }
        location = /pub-header {
            sse_publish $http_x_channels;
            sse_max_channels 1024;
            sse_history 0;
        }
        location = /stats {
            sse_stats;
        }
CONF

# The channel lists travel in the request line (up to ~72 KB) or in one header.
my $t = SSETest->new(spread => 1, http => <<'HTTP', server => $locations)->start;
    sse_shm_size 512m;
    client_header_buffer_size 4k;
    large_client_header_buffers 4 256k;
HTTP
END { local $?; $t->stop if $t }
my $PRE = ":ok\n\n";

# 1,024 names of 68 bytes whose first 5 bytes differ: k0000..k1023, then 63 bytes of filler.
my @names = map {
    my $i = $_;
    sprintf('k%04d', $i) . '.' . join('', map { chr(ord('a') + ($i * 7 + $_ * 3) % 26) } 0 .. 61)
} 0 .. $NAMES - 1;
is(scalar(grep { length == 68 } @names), $NAMES, '1,024 names of 68 bytes');

# Every stream, with the channels it asks for: 64 on patterns only, three on names only, one on
# `*`, one on `*`, a pattern and a name it covers (each event once all the same).
my @pattern_lists = map { my $j = $_; [map { substr($_, 0, 5 + $j) . '*' } @names] } 0 .. $PSTREAMS - 1;
my @plain_lists = ([@names[0 .. 2]], [@names], [$names[1023]]);
my @lists = (@pattern_lists, @plain_lists, ['*'], ['*', substr($names[1], 0, 5) . '*', $names[1]]);
my @labels = ((map { "pattern stream $_ (prefixes of " . (5 + $_) . " bytes)" } 0 .. $PSTREAMS - 1),
              'plain stream on 3 names', 'plain stream on all 1,024 names', 'plain stream on the last name',
              'stream on *', 'stream on *, k0001* and the name k0001...');
# Streams per channel (each pattern is asked for by one stream: the names differ in their first 5 bytes).
my %subs_of;
for my $k (0 .. $#lists) { push @{ $subs_of{$_} }, $k for @{ $lists[$k] } }
is(scalar(grep { /\*$/ } keys %subs_of), $PSTREAMS * $NAMES + 1, '65,537 distinct pattern channels asked for');

# The streams that take an event published to @names, and the reply's `subscribers`: streams
# summed over the target channels, the names and each pattern `prefix*` covering one (once).
sub expected_for {
    my (@names) = @_;
    my %channels;
    for my $name (@names) {
        $channels{$_} = 1 for $name, map { substr($name, 0, $_) . '*' } 0 .. length $name;
    }
    my (%to, $subscribers);
    for my $ch (keys %channels) {
        my $s = $subs_of{$ch} or next;
        $to{$_} = 1 for @$s;
        $subscribers += @$s;
    }
    return ([sort { $a <=> $b } keys %to], $subscribers // 0);
}

# Reads every stream until it holds what it should (or $timeout s pass), then a little more
# so that a duplicate would show.
sub settle {
    my ($streams, $want, $timeout) = @_;
    my $end = time + $timeout;
    for my $k (0 .. $#$streams) {
        $streams->[$k]->wait_body(length $want->[$k], $end - time);
    }
    for (1 .. 3) {
        Time::HiRes::sleep(0.1);
        $_->_fill(0) for @$streams;
    }
}

# Times single-name publishes (seconds each); dies on a refusal.
sub publish_timed {
    my ($name, $data, $times) = @_;
    my $s0 = time;
    my $e = $t->publish_event("/pub?topic=$name", $data);
    push @$times, time - $s0;
    return $e;
}

# CPU seconds the workers have used so far (user + system), as /proc counts them: what a publish
# costs nginx, apart from the machine's load and the client's own time.
my $TICK = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
sub workers_cpu {
    my $cpu = 0;
    for my $pid ($t->worker_pids) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my @f = split ' ', (<$fh> // '') =~ s/^.*\) //r;
        $cpu += ($f[11] + $f[12]) / $TICK;
    }
    return $cpu;
}

sub timing {
    my (@times) = sort { $a <=> $b } @_;
    my $sum = 0;
    $sum += $_ for @times;
    return sprintf 'mean %.2f ms, median %.2f ms, max %.2f ms', 1000 * $sum / @times, 1000 * $times[@times / 2], 1000 * $times[-1];
}

# --- the names of part 2 --------------------------------------------------------------------------
# Names covered by none to all of the 64 pattern streams: a name itself, its prefixes, a name
# differing from one after L bytes, longer names (up to 128 bytes), names under no pattern but `*`.
srand(56);
my @targets;
for my $n (0 .. 197) {
    my $i = int rand $NAMES;
    my $name = $names[$i];
    my $kind = $n % 7;
    my $l = 5 + int rand 63;    # 5..67
    if ($kind == 0) { }                                                                # the name
    elsif ($kind == 1) { $name = substr($name, 0, $l) }                                # a prefix of it
    elsif ($kind == 2) { substr($name, $l, 1) = substr($name, $l, 1) eq 'Z' ? 'Y' : 'Z' }  # differs at $l
    elsif ($kind == 3) { $name .= '.' . ('x' x int rand 60) }                          # longer
    elsif ($kind == 4) { $name = sprintf('k%04d', 1024 + $i) . substr($name, 5) }     # no such prefix
    elsif ($kind == 5) { $name = substr($name, 0, 1 + int rand 4) }                    # shorter than 5
    else { $name = "other.$n" }
    push @targets, $name;
}
push @targets, $names[7] . '.' . ('x' x 59), 'k';    # the longest name (128 bytes), and a 1-byte one
is(length $targets[-2], 128, '200 names to publish to, up to 128 bytes long');
# For comparison only: the same publishes before any stream (nobody listens, nothing is kept).
my @times_before;
my $cpu0 = workers_cpu();
publish_timed($targets[$_], "unheard $_", \@times_before) for 0 .. $#targets;
diag('single-name publish without streams: ' . timing(@times_before)
     . sprintf('; workers\' CPU per publish: %.2f ms (not asserted)', 1000 * (workers_cpu() - $cpu0) / @times_before));

my $base = $t->stats;
note("baseline: channels $base->{channels}, subscribers $base->{subscribers}, zone bytes $base->{zone_bytes_used}");

# --- the streams, over both workers -----------------------------------------------------------
my $t1 = time;
my @streams = $t->subscribe_spread(map { '/events?topics=' . join(',', @$_) } @lists);
$phase{subscribe} = time - $t1;
is(scalar(grep { $_->status == 200 } @streams), scalar @lists, scalar(@lists) . ' streams answered 200');
my $st = $t->stats;
is($st->{subscribers}, $base->{subscribers} + @lists, 'stats: every stream counted');
is($st->{channels}, $base->{channels} + $NAMES + $PSTREAMS * $NAMES + 1,
   'stats: 1,024 channels + 65,537 patterns (66,561 channels)');
my @per_worker = map { $_->{subscribers} } @{ $st->{workers} };
cmp_ok(scalar(grep { $_ > 0 } @per_worker), '>=', 2, "the streams are on both workers (@per_worker)");
my @want = ($PRE) x @streams;

# --- 1: one event for 66,561 channels -----------------------------------------------------------
# Counted per target channel: the streams on the names (1,024 + 3 + 1 + 1), on the 65,536
# patterns (k0001* has 2) and on `*` (2).
my ($big_to, $big_subscribers) = expected_for(@names);
is($big_subscribers, ($NAMES + 3 + 1 + 1) + ($PSTREAMS * $NAMES + 1) + 2, 'the big publish should count 66,568 subscribers');
is(scalar @$big_to, scalar @streams, 'and reach every stream');
my @big;
$cpu0 = workers_cpu();
$t1 = time;
my $list = join ',', @names;
cmp_ok(length $list, '>', 65535, 'the channel list is ' . length($list) . ' bytes');
push @big, $t->publish_event("/pub?topic=$list", 'one event for 66,561 channels');
my $p1 = time - $t1;
$t1 = time;
my $r = $t->publish('/pub-header', "the second\nof two lines", headers => {'X-Channels' => $list});
push @big, [$r->{id}, frame($r->{id}, "the second\nof two lines"), $r];
my $p2 = time - $t1;
$phase{'big publishes'} = $p1 + $p2;
is($big[0][2]{subscribers}, $big_subscribers, "first publish: subscribers $big_subscribers");
is($big[1][2]{subscribers}, $big_subscribers, "second publish (channels from a header): subscribers $big_subscribers");
cmp_ok($big[1][0], '>', $big[0][0], 'the ids increase');
$want[$_] .= frames(@big) for @$big_to;
$t1 = time;
settle(\@streams, \@want, 20);
$phase{'big delivery'} = time - $t1;
diag(sprintf 'publishing one event to 1,024 names and 65,537 patterns: %.3f s (query), %.3f s (header); '
     . 'workers\' CPU for both and their delivery: %.2f s (not asserted)', $p1, $p2, workers_cpu() - $cpu0);
my @wrong = grep { $streams[$_]->body ne $want[$_] } 0 .. $#streams;
is(scalar @wrong, 0, 'every stream got both events once each, byte-exact, in order');
for my $k (@wrong[0 .. ($#wrong < 4 ? $#wrong : 4)]) {
    is($streams[$k]->body, $want[$k], $labels[$k]);
}

# --- 2: many patterns, single-name publishes (the names chosen above) -------------------------------
my (@times, $mismatched_replies, %reached);
$cpu0 = workers_cpu();
$t1 = time;
for my $n (0 .. $#targets) {
    my ($to, $subs) = expected_for($targets[$n]);
    my $e = publish_timed($targets[$n], "event $n for $targets[$n]", \@times);
    if ($e->[2]{subscribers} != $subs) {
        $mismatched_replies++;
        diag("publish to $targets[$n]: subscribers $e->[2]{subscribers}, want $subs");
    }
    $want[$_] .= $e->[1] for @$to;
    $reached{scalar @$to}++;
    if ($n % 20 == 19) { $_->_fill(0) for @streams }
}
$phase{'200 publishes'} = time - $t1;
is($mismatched_replies // 0, 0, '200 single-name publishes: each reply counts the streams of the name and its covering patterns');
note('streams reached per publish: ' . join ', ', map { "$_: $reached{$_}x" } sort { $a <=> $b } keys %reached);
cmp_ok(scalar(keys %reached), '>=', 10, 'the publishes reach many different numbers of streams');
$t1 = time;
settle(\@streams, \@want, 20);
$phase{'200 deliveries'} = time - $t1;
diag('single-name publish with 65,537 pattern channels: ' . timing(@times)
     . sprintf('; workers\' CPU per publish and its delivery: %.2f ms (not asserted)', 1000 * (workers_cpu() - $cpu0) / @times));
@wrong = grep { $streams[$_]->body ne $want[$_] } 0 .. $#streams;
is(scalar @wrong, 0, 'every stream got exactly the events its channels cover, once each, byte-exact, in order');
for my $k (@wrong[0 .. ($#wrong < 4 ? $#wrong : 4)]) {
    my $d = first_difference([map { $_->{frame} } $streams[$k]->events], [grep { length } split /(?<=\n\n)/, substr($want[$k], length $PRE)]);
    fail("$labels[$k]: " . ($d // 'the preamble differs'));
}

# --- the zone returns to where it was -------------------------------------------------------------
$t1 = time;
$_->close for @streams;
my $after = $t->stats_until({subscribers => $base->{subscribers}, channels => $base->{channels},
                             zone_bytes_used => $base->{zone_bytes_used}}, 20);
$phase{'close'} = time - $t1;
is($after->{subscribers}, $base->{subscribers}, 'after the streams close: subscribers back to the baseline');
is($after->{channels}, $base->{channels}, 'channels back to the baseline');
is($after->{zone_bytes_used}, $base->{zone_bytes_used}, 'zone bytes used back to the baseline');
is($after->{events_stored}, 0, 'no event left in the zone');

$t->finish;
$phase{total} = time - $T0;
diag(join ', ', map { sprintf '%s %.2f s', $_, $phase{$_} } 'subscribe', 'big publishes', 'big delivery',
     '200 publishes', '200 deliveries', 'close', 'total');
done_testing;
