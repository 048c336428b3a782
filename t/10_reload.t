# Reload while events are being published: every stream of the old workers ends cleanly (zero
# chunk) after receiving, in order and without a gap, every event acknowledged before the reload;
# new streams receive new events; /stats counts only the new streams; a second reload with no
# stream open works too.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use POSIX ();
use SSETest;

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 0;  # the zone must return to its baseline
        }
        location = /stats {
            sse_stats;
        }
CONF

# Streams go to port 1 (spread: reuseport, so the kernel spreads them over both workers);
# publishes and /stats go to the default port.
my $t = SSETest->new(spread => 1, server => $locations)->start;

sub stats { $t->stats }
sub stats_until { $t->stats_until(@_) }

my $baseline = stats()->{zone_bytes_used};

# Old streams, on both workers.
my @old;
my $st;
for my $round (1 .. 5) {
    push @old, $t->subscribe('/events?topics=reload', port => $t->port(1)) for 1 .. 8;
    $st = stats_until({subscribers => scalar @old});
    last if 2 == grep { $_->{subscribers} > 0 } @{ $st->{workers} };
}
my @old_workers = $t->worker_pids;
is($st->{subscribers}, scalar @old, 'every old stream is counted');
is(scalar(grep { $_->{subscribers} > 0 } @{ $st->{workers} }), 2, 'both workers hold old streams')
    or diag explain $st->{workers};
$_->wait_body(length ":ok\n\n") for @old;
is(scalar(grep { $_->body eq ":ok\n\n" } @old), scalar @old, 'every old stream opened with :ok');

# The publisher: a child process publishing one event every few ms, writing one line per
# publish: "<n> <status> <id> <time the answer came>".
my $log = $t->dir . '/publisher.log';
my $stop = $t->dir . '/publisher.stop';
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    open my $fh, '>', $log or POSIX::_exit(2);
    $fh->autoflush(1);
    my $end = time + 10;
    for (my $n = 0; !-e $stop && time < $end; $n++) {
        my $r = eval { $t->request('POST', '/pub?topic=reload', body => "ev-$n") };
        my $status = $r ? $r->{status} : 0;
        my ($id) = $r ? ($r->{body} =~ /"id":"(\d+)"/) : ();
        printf $fh "%d %d %s %.6f\n", $n, $status, $id // '-', time;
        sleep 0.004;
    }
    close $fh;
    POSIX::_exit(0);    # never run the parent's destructors (they would stop nginx)
}

sleep 0.5;
my $t_reload = time;
$t->reload;
my $t_reloaded = time;
sleep 0.5;
open my $sfh, '>', $stop or die $!;
close $sfh;
waitpid($pid, 0);
is($? >> 8, 0, 'publisher exited normally');

open my $lfh, '<', $log or die "$log: $!";
my @pubs;
while (<$lfh>) {
    my ($n, $status, $id, $when) = split;
    push @pubs, {n => $n, status => $status, id => $id, when => $when};
}
close $lfh;
my @before = grep { $_->{when} < $t_reload } @pubs;
my @after = grep { $_->{when} > $t_reloaded } @pubs;
diag(sprintf "%d publishes: %d answered before the reload signal, %d after the new workers ran",
             scalar @pubs, scalar @before, scalar @after);
cmp_ok(scalar @before, '>=', 20, 'at least 20 events were published before the reload');
cmp_ok(scalar @after, '>=', 20, 'at least 20 events were published after the reload');
my @refused = grep { $_->{status} != 202 } @pubs;
is(scalar @refused, 0, 'every publish during the reload answered 202')
    or diag explain [@refused[0 .. ($#refused < 4 ? $#refused : 4)]];
my @ok = grep { $_->{status} == 202 } @pubs;
is(scalar(grep { $ok[$_]{id} > $ok[$_ - 1]{id} } 1 .. $#ok), $#ok, 'published ids increase');

# Every old stream ends cleanly and holds a gap-free prefix of the published events that
# covers everything acknowledged before the reload.
my $ended = 0;
for my $s (@old) { $ended++ if $s->wait_eof(10) }
is($ended, scalar @old, 'every old stream was closed by the server');
is(scalar(grep { $_->ended_cleanly } @old), scalar @old, 'every old stream ended with the zero-length chunk');

my %by_id = map { $_->{id} => $_ } @ok;
my ($prefix_ok, $cover_ok, $bytes_ok) = (0, 0, 0);
my @got_counts;
for my $i (0 .. $#old) {
    my $s = $old[$i];
    my @ev = $s->events;
    push @got_counts, scalar @ev;
    my $k = @ev;
    my @want = @ok[0 .. $k - 1];
    my $want_body = ":ok\n\n" . join('', map { "id: $_->{id}\ndata: ev-$_->{n}\n\n" } @want);
    if ($k <= @ok && $s->body eq $want_body) {
        $prefix_ok++;
    } else {
        is($s->body, $want_body, "old stream $i: its bytes are the first $k published events, in order");
    }
    if ($k >= @before) { $cover_ok++ } else { diag("old stream $i got $k events, " . scalar(@before) . " were acknowledged before the reload") }
}
diag("events per old stream: @got_counts");
is($prefix_ok, scalar @old, 'every old stream received the published events in order, without gap or duplicate');
is($cover_ok, scalar @old, 'every old stream received every event acknowledged before the reload');

# The old workers exit.
my %old_pid = map { $_ => 1 } @old_workers;
ok(SSETest::wait_until(sub { !grep { kill 0, $_ } @old_workers }, 10), 'the old workers exited');

# New streams.
my @new;
for my $round (1 .. 5) {
    push @new, $t->subscribe('/events?topics=reload', port => $t->port(1)) for 1 .. 4;
    $st = stats_until({subscribers => scalar @new});
    last if 2 == grep { $_->{subscribers} > 0 } @{ $st->{workers} };
}
is($st->{subscribers}, scalar @new, '/stats subscribers == the number of new streams (' . scalar(@new) . ')');
is($st->{channels}, 1, '/stats channels == 1');
my @live = $t->worker_pids;
is_deeply([sort { $a <=> $b } map { $_->{pid} } @{ $st->{workers} }], [@live],
          '/stats workers lists exactly the live workers')
    or diag explain $st->{workers};
my @r = map { $t->publish('/pub?topic=reload', "new-$_") } 1 .. 3;
is($r[0]{subscribers}, scalar @new, 'publish after the reload reaches exactly the new streams');
my $want_new = ":ok\n\n" . join('', map { "id: $r[$_]{id}\ndata: new-" . ($_ + 1) . "\n\n" } 0 .. 2);
for my $s (@new) { $s->events(3) }
is(scalar(grep { $_->body eq $want_new } @new), scalar @new, 'every new stream received exactly the 3 new events')
    or diag explain [map { $_->body } @new];

$_->close for @new;
$st = stats_until({subscribers => 0, channels => 0, events_stored => 0});
is_deeply([@$st{qw(subscribers channels events_stored)}], [0, 0, 0], 'new streams gone: 0 subscribers, channels, events');

# A second reload, with no stream open.
my @before2 = $t->worker_pids;
$t->reload;
ok(SSETest::wait_until(sub { !grep { kill 0, $_ } @before2 }, 10), 'second reload: the old workers exited');
my $s = $t->subscribe('/events?topics=reload2', port => $t->port(1));
is($s->status, 200, 'second reload: a stream opens');
my $r = $t->publish('/pub?topic=reload2', 'after second reload');
is($r->{subscribers}, 1, 'second reload: the publish reaches the stream');
my @ev = $s->events(1);
is($s->body, ":ok\n\nid: $r->{id}\ndata: after second reload\n\n", 'second reload: exact stream bytes');
$st = stats_until({subscribers => 1});
is($st->{subscribers}, 1, 'second reload: /stats subscribers == 1');
is_deeply([sort { $a <=> $b } map { $_->{pid} } @{ $st->{workers} }], [$t->worker_pids],
          'second reload: /stats workers lists exactly the live workers')
    or diag explain $st->{workers};
$s->close;
$st = stats_until({subscribers => 0, channels => 0, events_stored => 0, zone_bytes_used => $baseline});
if ($st->{zone_bytes_used} != $baseline) {
    $t->publish('/pub?topic=unrelated', 'x');
    $st = stats_until({subscribers => 0, channels => 0, events_stored => 0, zone_bytes_used => $baseline});
}
is_deeply([@$st{qw(subscribers channels events_stored zone_bytes_used)}], [0, 0, 0, $baseline],
          'after both reloads: the zone is back to its baseline');

$t->finish;
done_testing;
