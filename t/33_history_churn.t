# Churn in a small zone: several processes publish (single events and batches, with and without
# history, with a short TTL), resume with good, stale and garbage ids, read a little and leave,
# stall without reading, and DELETE channels, all at once, for a few seconds. nginx survives it
# with nothing alarming in error.log (under the sanitizer pass: no invalid memory access); a
# stream that stays on its channels throughout receives exactly what was published to them, in
# id order; and once everyone has left and every channel is deleted, the zone is back to its
# baseline.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF IPPROTO_TCP pack_sockaddr_in inet_aton);
use Time::HiRes qw(sleep time);
use SSETest;
use SSEClient;
use SSEExpect qw(first_difference);

my $t = SSETest->new(http => "    sse_shm_size 256k;\n", server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 16m;
            send_timeout 2s;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 500;
        }
        location = /pub0 {
            sse_publish $arg_topic;
            sse_history 0;
        }
        location = /pubt {
            sse_publish $arg_topic;
            sse_history 20;
            sse_history_ttl 300ms;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $base = $t->stats->{zone_bytes_used};
my @churn = map {"churn$_"} 0 .. 7;    # channels everything happens to
my @kept = qw(kept-a kept-b);          # channels only published to (never deleted)
my $SECONDS = $ENV{SSE_SANITIZED} ? 6 : 4;

# A stream that stays on the kept channels all along.
my $watch = $t->subscribe('/events?topics=kept-a,kept-b');
is($watch->wait_body(5), ":ok\n\n", 'the watching stream opens');

sub rnd { $_[rand @_] }

# Fill the zone's history first, so that the churn runs under memory pressure from the start.
$t->request('POST', '/pub?topic=' . $churn[$_ % @churn], body => 'f' x 1500) for 1 .. 200;

# Each child does random work until the deadline, logging the ids it published to kept channels.
my $deadline = time + $SECONDS;
my @kids;
for my $k (0 .. 2) {
    my $log = $t->dir . "/churn-$k.log";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        srand($$ ^ time);
        open my $fh, '>', $log or POSIX::_exit(2);
        $fh->autoflush(1);
        my (@open, @stuck, @ids);
        while (time < $deadline) {
            my $op = int rand 100;
            my $loc = rnd('/pub', '/pub', '/pub0', '/pubt');
            if ($op < 40) {
                my $ch = $op < 8 ? rnd(@kept) : rnd(@churn) . (rand() < 0.2 ? ',' . rnd(@churn) : '');
                $loc = '/pub' if $ch =~ /^kept/;    # the watcher checks these against the publish answers
                my $body = 'x' x int(rand 6000);
                my $r = eval { $t->request('POST', "$loc?topic=$ch", body => $body) } or next;
                push @ids, $1 if $r->{body} =~ /"id":"(\d+)"/;
                print $fh "$ch $r->{status} $1 " . length($body) . "\n" if $ch =~ /^kept/ && $r->{body} =~ /"id":"(\d+)"/;
            } elsif ($op < 48) {
                my $batch = join '', map { "data: " . ('b' x int(rand 800)) . "\n\n" } 1 .. 1 + int rand 6;
                eval { $t->request('POST', "$loc?topic=" . rnd(@churn), body => $batch,
                                   headers => {'Content-Type' => 'text/event-stream'}) };
            } elsif ($op < 70) {
                my $id = rand() < 0.6 && @ids ? $ids[rand @ids] - int(rand 30)
                       : rnd('garbage', '1', '99999999999999999999', '');
                my $s = eval { SSEClient->new(port => $t->port, path => '/events?topics=' . rnd(@churn) . ',' . rnd(@churn),
                                              headers => {'Last-Event-ID' => $id}) };
                push @open, $s if $s;
            } elsif ($op < 78 && @open) {
                my $s = splice @open, rand @open, 1;
                $s->drain(0.02);
                $s->close;
            } elsif ($op < 84) {
                # A stalled reader: a 4 KB receive window, never read, closed later.
                socket(my $sock, PF_INET, SOCK_STREAM, IPPROTO_TCP) or next;
                setsockopt($sock, SOL_SOCKET, SO_RCVBUF, pack('i', 4096));
                connect($sock, pack_sockaddr_in($t->port, inet_aton('127.0.0.1'))) or next;
                my $id = @ids ? $ids[0] - 1 : 1;
                syswrite($sock, "GET /events?topics=" . rnd(@churn) . " HTTP/1.1\r\nHost: x\r\nLast-Event-ID: $id\r\n\r\n");
                push @stuck, $sock;
            } elsif ($op < 88 && @stuck) {
                close splice @stuck, rand @stuck, 1;
            } elsif ($op < 90) {
                eval { $t->request('DELETE', rnd('/pub', '/pub0', '/pubt') . '?topic=' . rnd(@churn)) };
            } else {
                $_->drain(0.01) for @open;
            }
            if (@open > 30) { my $s = shift @open; $s->close }
        }
        $_->close for @open;
        close $_ for @stuck;
        close $fh;
        POSIX::_exit(0);
    }
    push @kids, [$pid, $log];
}
for my $k (@kids) { waitpid $k->[0], 0; is($? >> 8, 0, "churn process $k->[0] finished") }

# The watcher got exactly the events published to the kept channels, in id order.
my @published;
for my $k (@kids) {
    open my $fh, '<', $k->[1] or die "$k->[1]: $!";
    while (<$fh>) {
        my ($ch, $status, $id, $len) = split;
        push @published, [$id, $len] if $status == 202;
    }
}
@published = sort { $a->[0] <=> $b->[0] } @published;
cmp_ok(scalar @published, '>', 10, 'the churn published to the kept channels (' . scalar(@published) . ' events)');
my @got = $watch->events(scalar @published, 20);
my $diff = first_difference([map { $_->{id} } @got], [map { $_->[0] } @published]);
ok(!defined $diff, 'the watching stream received every kept event once, in id order') or diag($diff);
my @bad = grep { length($got[$_]{data}) != $published[$_][1] } grep { $_ < @got } 0 .. $#published;
is(scalar @bad, 0, 'each with its whole data');
$watch->close;

# Everyone gone, every channel deleted: back to the baseline.
my $st = $t->stats_until({subscribers => 0}, 10);
is($st->{subscribers}, 0, 'every stream has left');
for my $ch (@churn, @kept) {
    my $r = $t->request('DELETE', "/pub?topic=$ch");
    ok($r->{status} == 200 || $r->{status} == 404, "DELETE $ch: 200 or 404");
}
$t->request('POST', '/pub0?topic=collect', body => 'x');    # collection is lazy
$st = $t->stats_until({channels => 0, events_stored => 0, events_retained => 0, zone_bytes_used => $base}, 10);
is_deeply([@$st{qw(subscribers channels events_stored events_retained zone_bytes_used)}], [0, 0, 0, 0, $base],
          'the zone is back to its baseline: no subscriber, channel, event or byte left');
cmp_ok($st->{history_evictions}, '>', 0, 'the zone was under memory pressure (history evicted)');
diag("history_evictions $st->{history_evictions}, resets $st->{resets}, events_replayed $st->{events_replayed}, "
     . "slow_disconnects $st->{slow_disconnects}, publishes_refused $st->{publishes_refused}");

$t->allow_log(qr/\[warn\].*shared zone full, evicted/);
$t->finish;
done_testing;
