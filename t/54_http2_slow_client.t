# HTTP/2 streams whose client advertises a tiny initial window (SETTINGS_INITIAL_WINDOW_SIZE 1,
# 10, 100 bytes) and never sends WINDOW_UPDATE fall behind sse_send_buffer (4k) while events keep
# coming (200 events of 1 KB over ~2 s): the module ends them (slow_disconnects counts each).
# A fourth client takes the default window but stops reading its socket (small SO_RCVBUF): once
# ended, what it can still read must be a clean prefix of the stream (no released bytes).
# Meanwhile an HTTP/1.1 stream and a normal HTTP/2 stream (curl) on the same channel receive every
# event byte-exact. Once the slow clients are closed, the zone is back to its baseline and, under
# the ASan build, nothing was read or written after it was released (nginx's HTTP/2 layer may
# still hold DATA frames pointing at a dropped stream's frames). Rounds: SSE_H2_ROUNDS (2).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use POSIX ();
use SSETest;
use SSEH2;

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 4k;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 0;  # the zone must return to its baseline
        }
        location = /stats {
            sse_stats;
        }
CONF
my $t = SSETest->new(extra_ports => 2, server => $locations, http => <<"CONF")->start;
    server {
        listen 127.0.0.1:%%PORT1%% http2;
$locations
    }
    server {
        listen 127.0.0.1:%%PORT2%% http2 sndbuf=4k;
$locations
    }
CONF
END { local $?; $t->stop if $t }

my $curl_v = `curl -V 2>&1`;
plan skip_all => 'curl without HTTP/2' unless $curl_v =~ /HTTP2/;

my $PRE = ":ok\n\n";
my $dir = $t->dir;
my $baseline = $t->stats->{zone_bytes_used};

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    return <$fh> // '';
}

my $rounds = $ENV{SSE_H2_ROUNDS} || 2;
my $slow_total = 0;
for my $round (1 .. $rounds) {
    my $topic = "h2slow$round";
    my $reader = $t->subscribe("/events?topics=$topic");
    is($reader->wait_body(length $PRE, 5), $PRE, "round $round: the HTTP/1.1 stream opens");

    my $url = 'http://127.0.0.1:' . $t->port(1) . "/events?topics=$topic";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, ">", "$dir/h2.$round.version" or POSIX::_exit(126);
        { exec 'curl', '-sN', '--http2-prior-knowledge', '--max-time', '30', '-o', "$dir/h2.$round.body",
               '-w', '%{http_version}', '--stderr', "$dir/h2.$round.err", $url }
        POSIX::_exit(127);
    }

    # The slow clients: windows of 1, 10 and 100 bytes; the first connection holds two streams.
    my @slow;
    for my $w (1, 10, 100) {
        my $c = SSEH2->new(port => $t->port(1), window => $w);
        my @sids = map { $c->get("/events?topics=$topic") } 1 .. ($w == 1 ? 2 : 1);
        push @slow, [$c, $_, $w] for @sids;
    }
    # And one that takes a normal window but stops reading at the TCP level (a 4 KB receive buffer,
    # on a listener with a 4k send buffer, far below the stream window): nginx's HTTP/2 layer queues
    # DATA frames for it, which point at the stream's frames after it is ended.
    my $tcp = SSEH2->new(port => $t->port(2), rcvbuf => 4096);
    push @slow, [$tcp, $tcp->get("/events?topics=$topic"), 'tcp'];
    $_->[0]->read_for(0.2) for @slow;
    my $st = $t->stats_until({subscribers => 2 + @slow}, 5);
    is($st->{subscribers}, 2 + @slow, "round $round: " . (2 + @slow) . ' streams (HTTP/1.1, curl, ' . @slow . ' slow)');
    is($slow[$_][0]->status($slow[$_][1]), 200, "round $round: slow stream $_ (window $slow[$_][2]) got 200") for 0 .. $#slow;
    my $slow_before = $st->{slow_disconnects};

    # 200 events of 1 KB over ~2 s; the HTTP/1.1 reader keeps up, the slow ones read nothing.
    my @pub;
    for my $k (0 .. 199) {
        my $data = sprintf('%03d:', $k) . join('', map { chr(97 + ($k + $_) % 26) } 1 .. 1020);
        my $r = $t->publish("/pub?topic=$topic", $data);
        push @pub, {id => $r->{id}, data => $data};
        $reader->events($k + 1, 0) if $k % 10 == 0;
        sleep 0.01;
    }
    my $want = $PRE . join('', map { "id: $_->{id}\ndata: $_->{data}\n\n" } @pub);

    $st = $t->stats_until({slow_disconnects => $slow_before + @slow, subscribers => 2}, 10);
    is($st->{slow_disconnects} - $slow_before, scalar @slow, "round $round: every slow HTTP/2 stream was ended as too slow");
    is($st->{subscribers}, 2, "round $round: the two readers remain");
    for my $i (0 .. $#slow) {
        my ($c, $sid, $w) = @{ $slow[$i] };
        $c->read_for(0.3);
        ok($c->gone($sid), "round $round: slow stream $i (window $w) was ended (RST_STREAM, end of stream or connection)");
        my $got = $c->data($sid);
        ok(length($got) <= length($want) && substr($want, 0, length $got) eq $got,
           "round $round: slow stream $i received a prefix of the stream (" . length($got) . ' bytes)');
    }
    $_->[0]->close for @slow;

    $reader->events(scalar @pub, 10);
    ok($reader->body eq $want, "round $round: the HTTP/1.1 stream received every event, byte-exact")
        or diag('got ' . length($reader->body) . ' bytes, want ' . length($want));
    SSETest::wait_until(sub { length(slurp("$dir/h2.$round.body")) >= length $want }, 10);
    my $d = $t->request('DELETE', "/pub?topic=$topic");
    is($d->{status}, 200, "round $round: DELETE ends the channel's streams");
    my $done = SSETest::wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, 10);
    ok($done, "round $round: curl finished once its stream ended");
    kill 'TERM', $pid unless $done;
    waitpid($pid, 0) unless $done;
    my $h2 = slurp("$dir/h2.$round.body");
    is(slurp("$dir/h2.$round.version"), "2", "round $round: curl's stream was HTTP/2");
    ok($h2 eq $want, "round $round: the normal HTTP/2 stream received every event, byte-exact")
        or diag('got ' . length($h2) . ' bytes, want ' . length($want) . '; curl: ' . slurp("$dir/h2.$round.err"));
    $reader->close;

    $st = $t->stats_until({subscribers => 0, channels => 0, zone_bytes_used => $baseline}, 10);
    is_deeply([@$st{qw(subscribers channels zone_bytes_used)}], [0, 0, $baseline],
              "round $round: everyone gone: no subscriber, no channel, zone_bytes_used back to the baseline");
    $slow_total += @slow;
}
my @too_slow = grep { /\[info\].*sse: client too slow/ } split /\n/, $t->error_log;
is(scalar @too_slow, $slow_total, "error.log has one [info] 'client too slow' line per slow stream");

$t->finish;
done_testing;
