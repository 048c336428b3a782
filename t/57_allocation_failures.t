# Allocation failures (issue 10): against the fault-injection build (FAULT_INJECTION=1
# scripts/build.sh), where the module's own allocations in the workers fail at the rate
# SSE_FAULT_RATE, 20 EventSource-like clients on 4 channels (some on two) follow ~500 numbered
# events. What cannot be served gets a 5xx or is ended; every ended stream reconnects with
# Last-Event-ID (retrying 5xx) and continues. At the end each client has received exactly the
# accepted events of its channels, in order, each once, without a reset; no worker died; the
# zone returns to its baseline once the clients are gone and the channels deleted.
#
#   SSE_FAULT_MODULE  the fault-injection module (scripts/test.sh builds build/asan/fault/...);
#                     the test is skipped without it
#   SSE_FAULT_RATE    the failure rate (default 0.02)
#   SSE_FAULT_SEED    the seed of the test's own choices (default 57); the module's failures are
#                     seeded by the worker's pid, so they differ from run to run
#   SSE_FAULT_EVENTS  how many events (default 500)
# Under the sanitizer build (as scripts/test.sh runs it) the preloaded ASan runtime's operator new
# takes precedence over the module's, so C++ `new` never fails there; the release fault build
# (FAULT_INJECTION=1 scripts/build.sh -> build/fault/) exercises std::bad_alloc as well.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use IO::Select;
use Time::HiRes qw(sleep time);

BEGIN {
    plan skip_all => 'SSE_FAULT_MODULE is not set: this test needs the fault-injection build '
                   . '(FAULT_INJECTION=1 SANITIZE=1 scripts/build.sh; scripts/test.sh runs it)'
        unless $ENV{SSE_FAULT_MODULE};
    plan skip_all => "SSE_FAULT_MODULE $ENV{SSE_FAULT_MODULE} does not exist" unless -f $ENV{SSE_FAULT_MODULE};
}

use SSETest;
use SSEExpect qw(frame first_difference);
use Digest::MD5 qw(md5_hex);

my $RATE = $ENV{SSE_FAULT_RATE} // '0.02';
my $SEED = $ENV{SSE_FAULT_SEED} // 57;
my $EVENTS = $ENV{SSE_FAULT_EVENTS} // 500;
my $BALLAST = 300;
my @CHANNELS = map { "f$_" } 0 .. 3;
my $started_at = time;

$ENV{SSE_MODULE} = $ENV{SSE_FAULT_MODULE};
$ENV{SSE_FAULT_RATE} = $RATE;    # nginx keeps it for its workers: env SSE_FAULT_RATE below

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat 1s;
            sse_max_lifetime 4s 3s;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 5000;
        }
        location = /pub0 {
            sse_publish $arg_topic;
            sse_history 0;
        }
        location = /stats {
            sse_stats;
        }
CONF

# spread: streams on port(1), a reuseport listener, land on both workers.
my $t = SSETest->new(main => 'env SSE_FAULT_RATE;', spread => 1, server => $locations)->start;
END { local $?; $t->stop if $t }
# A hung worker must not hold the run: the test dies (and its END stops nginx) instead.
$SIG{ALRM} = sub { die "57_allocation_failures.t: no end after 150 s\n" . hung_workers() };
$SIG{TERM} = sub { die "57_allocation_failures.t: terminated\n" };
alarm 150;
srand($SEED);
diag("fault rate $RATE, seed $SEED, $EVENTS events");
my @workers_at_start = $t->worker_pids;

# Counts of what the injection made the server answer, for the summary.
my %seen;

# The workers using CPU now (a worker in an endless loop answers nothing), for a diag.
sub hung_workers {
    my $ticks = sub { my ($pid) = @_; open my $fh, '<', "/proc/$pid/stat" or return 0;
                      my @f = split ' ', (<$fh> // '') =~ s/^.*\) //r; return ($f[11] // 0) + ($f[12] // 0) };
    my %before = map { $_ => $ticks->($_) } $t->worker_pids(1);
    sleep 1;
    my @busy = grep { $ticks->($_) - $before{$_} > 50 } keys %before;
    return @busy ? "workers spinning (over half a CPU): @busy\n" : "no worker is spinning\n";
}

# A request retried while it is answered 5xx (an injected failure): the first other answer.
# Anything but $ok or a 5xx is a failure of the test; no answer at all ends it.
sub retried {
    my ($what, $method, $path, $ok, %o) = @_;
    for my $try (1 .. 100) {
        my $r = $t->request($method, $path, timeout => 5, %o);
        die "$what $method $path: no answer within 5 s\n" . hung_workers() if !$r->{status};
        return $r if grep { $r->{status} == $_ } @$ok;
        $seen{"$what $r->{status}"}++;
        if ($r->{status} < 500) {
            fail("$what $method $path: $r->{status} $r->{body}");
            return $r;
        }
        sleep 0.005;
    }
    fail("$what $method $path: still refused after 100 tries");
    return {status => 0};
}

sub stats {
    my $r = retried('stats', 'GET', '/stats', [200]);
    return $r->{status} == 200 ? decode_json($r->{body}) : {};
}

# Waits until the stats have every value of $want; returns the last read.
sub stats_until {
    my ($want, $timeout) = @_;
    my $st;
    SSETest::wait_until(sub {
        $st = stats();
        for my $k (keys %$want) { return 0 unless ($st->{$k} // -1) == $want->{$k} }
        return 1;
    }, $timeout);
    return $st;
}

# Publishes until accepted (202); returns the id.
sub publish {
    my ($path, $body, %o) = @_;
    my $r = retried('publish', 'POST', $path, [202], body => $body, %o);
    return undef unless $r->{status} == 202;
    my $reply = decode_json($r->{body});
    return $reply->{id};
}

my $base = stats();
is_deeply([@$base{qw(subscribers channels events_stored)}], [0, 0, 0], 'baseline: no stream, channel or event');
my $baseline_bytes = $base->{zone_bytes_used};

# Ballast: the oldest history, on a channel nobody follows. An injected failure of a zone
# allocation is taken as a full zone, which evicts the oldest retained events to make room:
# these, not the events the clients follow, so that a client never has a reason for a reset.
# In batches of 10: a batch is stored whole or refused (507) whole, and at the start there is no
# history to evict for room, so a batch of 300 would nearly always meet a failure.
for my $b (0 .. $BALLAST / 10 - 1) {
    my $ballast = join '', map { "data: ballast $_\n\n" } $b * 10 + 1 .. $b * 10 + 10;
    publish('/pub?topic=fballast', $ballast, headers => {'Content-Type' => 'text/event-stream'});
}
# The position every client starts from: an event on all four channels, not expected by them.
my $seed_id = publish('/pub?topic=' . join(',', @CHANNELS), 'seed');
my $st0 = stats();

# ---- the clients ----------------------------------------------------------------------------

# 20 clients: 16 on one channel, 4 on two.
my @clients;
for my $i (0 .. 19) {
    my @ch = ($CHANNELS[$i % 4]);
    push @ch, $CHANNELS[($i + 1) % 4] if $i % 5 == 4;
    push @clients, {i => $i, channels => \@ch, path => '/events?topics=' . join(',', @ch), last_id => $seed_id,
                    got => [], streams => 0, refused => 0, refused_run => 0, ends => {}, resets => [], s => undef, next_try => 0};
}

# What went wrong on the wire, beyond the expected 5xx and ends.
my @anomalies;

sub connect_client {
    my ($c) = @_;
    my $s = eval { $t->resume($c->{path}, $c->{last_id}, port => $t->port(1), timeout => 5) };
    if (!$s) {
        # No response head: the connection was closed (or timed out) before an answer.
        my $err = $@ =~ s/ at .*//sr;
        die "client $c->{i}: subscribe: $err\n" . hung_workers() if $err =~ /within/;
        $seen{"subscribe closed without an answer"}++;
        push @anomalies, "client $c->{i}: subscribe: the connection closed without an answer ($err)";
        $c->{next_try} = time + 0.02;
        return;
    }
    if (($s->status // 0) != 200) {
        my $status = $s->status // 'none';
        $seen{"subscribe $status"}++;
        $c->{refused}++;
        $c->{refused_run}++;
        push @anomalies, "client $c->{i}: subscribe answered $status (not 5xx): " . ($s->{status_line} // '')
            unless $status =~ /^5\d\d$/;
        $s->close;
        $c->{next_try} = time + 0.02;
        return;
    }
    $c->{s} = $s;
    $c->{refused_run} = 0;
    $c->{taken} = 0;
    $c->{streams}++;
    $c->{opened_at} = time;
    harvest($c);    # what came with the head
}

# Takes in what a client's stream brought; on its end, the client reconnects next turn.
sub harvest {
    my ($c) = @_;
    my $s = $c->{s} or return;
    my @ev = @{ $s->{events} };
    for my $e (@ev[$c->{taken} .. $#ev]) {
        if (($e->{event} // '') eq 'reset') {
            push @{ $c->{resets} }, $e->{data};
            next;
        }
        push @{ $c->{got} }, [$e->{id}, $e->{data}, $e->{frame}];
        $c->{last_id} = $e->{id} if defined $e->{id} && length $e->{id};
    }
    $c->{taken} = @ev;
    return unless $s->eof;
    my $how = $s->ended_cleanly ? 'clean end' : 'closed';
    $c->{ends}{$how}++;
    $seen{"stream $how"}++;
    $s->close;
    $c->{s} = undef;
    $c->{next_try} = time;
}

# One turn: reads what the streams have (waiting up to $wait s for something), reconnects the
# clients whose stream ended.
sub pump {
    my ($wait) = @_;
    my %by_sock;
    for my $c (@clients) {
        $by_sock{ fileno($c->{s}{sock}) } = $c if $c->{s};
    }
    my $sel = IO::Select->new(map { $_->{s}{sock} } values %by_sock);
    my @ready = $sel->count ? $sel->can_read($wait) : do { sleep $wait; () };
    for my $sock (@ready) {
        my $c = $by_sock{ fileno $sock } or next;
        # Everything the socket has now.
        while ($c->{s}->_fill(0) && !$c->{s}->eof) {
            last unless IO::Select->new($sock)->can_read(0);
        }
        harvest($c);
    }
    for my $c (@clients) {
        connect_client($c) if !$c->{s} && time >= $c->{next_try};
    }
}

connect_client($_) for @clients;
pump(0.05) for 1 .. 5;

# ---- the publisher ----------------------------------------------------------------------------

my @accepted;    # [id, data, {channel => 1}], in publish order
for my $n (1 .. $EVENTS) {
    my @ch = ($CHANNELS[int rand 4]);
    if (rand() < 0.1) {
        my $other = $CHANNELS[int rand 4];
        push @ch, $other unless $other eq $ch[0];
    }
    my $data = "n=$n " . join(',', @ch) . ' ' . ('x' x int rand 300);
    my $id = publish('/pub?topic=' . join(',', @ch), $data) // BAIL_OUT("publish $n never accepted");
    push @accepted, [$id, $data, {map { $_ => 1 } @ch}];
    pump($n % 25 ? 0 : 0.02);
}
my $published_ms = int((time - $started_at) * 1000);

# Ids are increasing in publish order: the order every client must see.
my @ids = map { $_->[0] } @accepted;
ok(!grep({ $ids[$_] <= $ids[$_ - 1] } 1 .. $#ids), 'accepted ids increase in publish order');

my %want;
for my $c (@clients) {
    my %on = map { $_ => 1 } @{ $c->{channels} };
    $want{ $c->{i} } = [grep { grep { $on{$_} } keys %{ $_->[2] } } @accepted];
}

# ---- catching up ----------------------------------------------------------------------------

my $caught_up = SSETest::wait_until(sub {
    pump(0.05);
    for my $c (@clients) {
        my $w = $want{ $c->{i} };
        return 0 if @$w && (!defined $c->{last_id} || $c->{last_id} < $w->[-1][0]);
    }
    return 1;
}, 30);
ok($caught_up, 'every client reached the last accepted event of its channels (within 30 s)') or do {
    for my $c (@clients) {
        my $w = $want{ $c->{i} };
        my $behind = grep { $_->[0] > $c->{last_id} } @$w;
        next unless $behind;
        diag("client $c->{i} (" . join(',', @{ $c->{channels} }) . ") is $behind events behind, at id $c->{last_id}, "
             . ($c->{s} ? 'with a stream open' : "refused $c->{refused_run} times in a row"));
    }
};
# Anything more that is on its way (a duplicate, an event nobody published).
my $end = time + 0.3;
pump(0.05) while time < $end;

# ---- what the clients received ----------------------------------------------------------------

my %accepted_by_id = map { $_->[0] => $_ } @accepted;

# Events the clients got that no 202 announced: stored by a publish that was answered 5xx (and
# so published again by the retry). Shown by their number n.
my %unannounced;
for my $c (@clients) {
    for my $e (@{ $c->{got} }) {
        $unannounced{ $e->[0] } //= $e->[1] =~ /^(n=\d+ \S+)/ ? $1 : $e->[1] unless $accepted_by_id{ $e->[0] };
    }
}
my $stored_more = stats()->{events_published} - $st0->{events_published};
ok(!%unannounced && $stored_more == @accepted,
   "a publish answered 5xx stored nothing (events_published grew by $stored_more for " . @accepted . ' accepted)')
    or diag(scalar(keys %unannounced) . " events stored by a publish answered 5xx reached clients (id: n=... channels): "
            . join(', ', map { "$_: $unannounced{$_}" } sort keys %unannounced));

# Each client against the accepted events of its channels, leaving out the unannounced ones
# (counted above): compared as exact frames, shown by id and the start of the data.
my @inexact;
for my $c (@clients) {
    my $w = $want{ $c->{i} };
    my @got = grep { !$unannounced{ $_->[0] } } @{ $c->{got} };
    my @want_frames = map { [$_->[0], $_->[1], frame($_->[0], $_->[1])] } @$w;
    my $diff = first_difference(\@got, \@want_frames,
                                sub { my ($id, $data, $frame) = @{ $_[0] }; "$id " . substr($data // '', 0, 12) . ' ' . md5_hex($frame // '') });
    next unless defined $diff || @{ $c->{resets} };
    my %count;
    $count{ $_->[0] }++ for @got;
    my @twice = grep { $count{$_} > 1 } sort keys %count;
    my @missing = grep { !$count{$_} } map { $_->[0] } @$w;
    my $text = "client $c->{i} (" . join(',', @{ $c->{channels} }) . ", $c->{streams} streams):";
    $text .= "\n  $diff" if defined $diff;
    $text .= "\n  delivered twice: @twice" if @twice;
    $text .= "\n  missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]" . (@missing > 10 ? ' ...' : '') if @missing;
    $text .= "\n  resets: @{ $c->{resets} }" if @{ $c->{resets} };
    push @inexact, $text;
}
ok(!@inexact, 'every client received exactly the accepted events of its channels (their exact frames), '
              . 'in order, each once, no reset')
    or diag(join "\n", @inexact[0 .. ($#inexact < 4 ? $#inexact : 4)], (@inexact > 5 ? '(' . (@inexact - 5) . ' more clients)' : ()));
ok(!@anomalies, 'every refused stream got a 5xx') or diag(join "\n", @anomalies);

my $streams = 0;
$streams += $_->{streams} for @clients;
my %ends;
for my $c (@clients) { $ends{$_} += $c->{ends}{$_} for keys %{ $c->{ends} } }

# ---- the zone returns to its baseline ----------------------------------------------------------

$_->{s} && $_->{s}->close for @clients;
$_->{s} = undef for @clients;
my $st = stats_until({subscribers => 0}, 10);
is($st->{subscribers}, 0, 'all streams are gone');
my $evictions = $st->{history_evictions} - $base->{history_evictions};
# What the ballast still holds: the evictions never reached the clients' channels.
my $ballast_reply = retried('channel state', 'GET', '/pub?topic=fballast', [200]);
my $ballast_state = $ballast_reply->{status} == 200 ? decode_json($ballast_reply->{body}) : {};
ok(($ballast_state->{retained} // 0) > 0,
   "the injected evictions ($evictions) took only ballast (it still retains " . ($ballast_state->{retained} // '?') . ')');

for my $ch (@CHANNELS, 'fballast') {
    my $r = retried('delete', 'DELETE', "/pub?topic=$ch", [200, 404]);
    is(retried('channel state', 'GET', "/pub?topic=$ch", [200, 404])->{status}, 404, "channel $ch is gone after DELETE");
}
my $want_base = {subscribers => 0, channels => 0, events_stored => 0, zone_bytes_used => $baseline_bytes};
$st = stats_until($want_base, 5);
if (($st->{zone_bytes_used} // -1) != $baseline_bytes || $st->{events_stored} || $st->{channels}) {
    # Collection is lazy: give it a publish that stores nothing.
    publish('/pub0?topic=fnudge', 'nudge');
    $st = stats_until($want_base, 5);
}
is_deeply({map { $_ => $st->{$_} } keys %$want_base}, $want_base,
          "the zone is back to its baseline ($baseline_bytes bytes used, no channel, stream or stored event)")
    or diag(encode_json($st));

is_deeply([$t->worker_pids], \@workers_at_start, 'the same workers run: none died');
my @oom = grep { /\[error\].*(out of memory|zone is full|zone full)/ } split /\n/, $t->error_log;
diag(sprintf "%d published (%d ms), %d streams opened over 20 clients, %d history evictions, %d resets, "
             . "%d error.log out-of-memory lines, %d ms in all",
     scalar @accepted, $published_ms, $streams, $evictions, $st->{resets} - $base->{resets}, scalar @oom,
     int((time - $started_at) * 1000));
diag(join ', ', map { "$_: $seen{$_}" } sort keys %seen);
diag('streams_ended_out_of_memory: ' . ($st->{streams_ended_out_of_memory} // '?'));

$t->finish;
done_testing;
