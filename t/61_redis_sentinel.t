# Redis behind Sentinel (issue 11, item 2): a primary, its replica and three sentinels (t/lib/
# SSESentinel.pm), and two nginx nodes with
#   sse_redis redis-sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster;
# Both nodes publish to one channel at a steady rate (each every 100 ms, alternating), one stream
# on each node. After 2 s the primary is SIGKILLed; the sentinels promote the replica; the nodes
# publish on through the failover and 3 s past it. Then each node's stream holds every event
# answered 202, before and after the kill, once each, with the ids of the publish replies, each
# node's events in its publish order (docs/redis.md promises no more across nodes); publishes
# during the failover were queued, not refused; the nodes follow the failover to the new primary
# and never wrote to the replica before it was promoted. A third node whose first sentinel address
# refuses connections finds the primary through the others.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use POSIX ();
use JSON::PP;
use SSETest;
use SSERedis;
use SSESentinel;
use SSEExpect qw(frame first_difference);

my $locations = SSERedis::locations(pub => 'sse_history 1000;');

my $PERIOD = 0.1;          # each node publishes every 100 ms; B 50 ms after A
my $BEFORE_KILL = 2.0;     # publishing before the SIGKILL
my $AFTER_SWITCH = 3.0;    # publishing after every sentinel reports the new primary
my $FAILOVER_LIMIT = 20;   # the sentinels must have promoted the replica by then

my $t_begin = time;
my $set = SSESentinel->new;
my $primary = $set->primary;
my ($replica) = $set->replicas;
my ($P, $R) = ($primary->port, $replica->port);
my @nodes;
my @late;
END {
    local $?;
    # The publishers stop by themselves too, should the test die while they run.
    if ($nodes[0]) { open my $fh, '>', $nodes[0]->dir . '/stop-publishing' }
    if (!Test::More->builder->is_passing) {
        for my $n (grep { defined } @nodes, @late) {
            my @l = grep { /\[(?:warn|error|crit|alert|emerg)\]|sse: redis|Sanitizer|runtime error/ } split /\n/, $n->error_log;
            splice @l, 0, @l - 40 if @l > 40;
            diag('node :' . $n->port . "'s error.log (warn or worse, and every sse: redis line):\n" . join("\n", @l)) if @l;
        }
        $set->diag_logs if $set;
    }
    $_->stop for grep { defined } @nodes, @late;
}

diag(sprintf 'primary :%d, replica :%d, sentinels %s: ready in %.1f s', $P, $R,
     join(',', map { $_->port } $set->sentinels), time - $t_begin);

# --- the set as it starts ---------------------------------------------------------------------
is((split /\n/, $primary->cli('ROLE'))[0], 'master', "ROLE of :$P is master");
is((split /\n/, $replica->cli('ROLE'))[0], 'slave', "ROLE of :$R is slave");
is_deeply([$set->master_addrs], [("127.0.0.1:$P") x 3], "every sentinel reports the primary 127.0.0.1:$P");

# The node's log lines about Redis at notice or above, each as [level, pid, text].
sub redis_lines {
    my ($node) = @_;
    my @l;
    for (split /\n/, $node->error_log) {
        my ($level, $pid, $text) = /\[(notice|warn|error|crit|alert|emerg)\] (\d+)#\d+: (?:\*\d+ )?(.*sse: redis.*)$/ or next;
        push @l, [$level, $pid, $text];
    }
    return @l;
}

sub show_lines { return join "\n", map { "  [$_->[0]] $_->[1]: $_->[2]" } @_ }

# CLIENT LIST entries on $redis named sse-* that carry the pid of one of $node's workers.
sub node_clients {
    my ($redis, $node) = @_;
    my @pids = $node->worker_pids;
    return grep { my $name = $_; grep { $name =~ /(?<!\d)$_(?!\d)/ } @pids } $redis->client_names('sse-');
}

# Clients of the sentinels that listen to something (SUBSCRIBE or PSUBSCRIBE) and are not
# sentinels themselves: the nodes' subscriptions to +switch-master (Sentinel has no PUBSUB).
sub sentinel_subscribers {
    my @l;
    for my $s ($set->sentinels) {
        for (split /\n/, $s->cli('CLIENT', 'LIST')) {
            my ($name) = / name=(\S*)/;
            my ($sub) = / sub=(\d+)/;
            my ($psub) = / psub=(\d+)/;
            next if ($name // '') =~ /^sentinel-/;
            push @l, ':' . $s->port . " $_" if ($sub // 0) + ($psub // 0) > 0;
        }
    }
    return @l;
}

# --- two nodes ---------------------------------------------------------------------------------
my $url = $set->url;
@nodes = $set->nodes(2, url => $url, server => $locations, start => 0);
my ($A, $B) = @nodes;
{
    my ($rc, $out) = $A->test_conf;
    is($rc, 0, "nginx -t accepts sse_redis $url") or do { diag($out); done_testing; exit };
}
$_->start for @nodes;
ok(SSERedis::wait_connected($_, 10), 'node :' . $_->port . ' is connected to Redis') for @nodes;
my %workers = map { $_->port => join(' ', $_->worker_pids) } @nodes;

for my $n (@nodes) {
    my $ok = SSETest::wait_until(sub { node_clients($primary, $n) > 0 }, 5);
    ok($ok, 'CLIENT LIST of the primary holds connections of node :' . $n->port)
        or diag(join ' ', $primary->client_names('sse-'));
}
is($replica->client_count('sse-'), 0, 'CLIENT LIST of the replica: no sse- connection')
    or diag(join ' ', $replica->client_names('sse-'));
{
    my @subs;
    SSETest::wait_until(sub { @subs = sentinel_subscribers(); @subs >= @nodes }, 5);
    cmp_ok(scalar @subs, '>=', scalar @nodes, 'the sentinels have a subscriber per node (+switch-master)')
        or diag(join "\n", @subs);
}

my $sa = $A->subscribe('/events?topics=fo');
my $sb = $B->subscribe('/events?topics=fo');
ok($primary->wait_numsub('sse:fo', 2), 'PUBSUB NUMSUB sse:fo is 2 on the primary');

# --- publish on both nodes; SIGKILL the primary after 2 s ---------------------------------------
my $stop_file = $A->dir . '/stop-publishing';

# A publisher POSTing "<tag> <n>" to $node's channel fo every $PERIOD until $stop_file exists
# (SSERedis::start_paced_publisher); returns its pid and its log.
sub start_publisher {
    my ($node, $tag, $delay) = @_;
    return SSERedis::start_paced_publisher($node, $tag, log => $A->dir . "/publisher-$tag.log", delay => $delay,
                                           period => $PERIOD, stop_file => $stop_file, channel => sub { 'fo' });
}

my $t0 = time;
my %pub = (A => [start_publisher($A, 'A', 0)], B => [start_publisher($B, 'B', $PERIOD / 2)]);
my ($killed_at, $switched_at, %switch_seen, %down_at, %up_at, $last_slave_info, $pre_kill_info, $promoted);
my %name = ($A->port => 'A', $B->port => 'B');
# The streams are read afterwards: the kernel's buffers hold a few hundred short events.
while (1) {
    if (!$killed_at) {
        if (time - $t0 >= $BEFORE_KILL) {
            $pre_kill_info = $replica->info('replication', 'commandstats', 'errorstats');
            $primary->crash;
            $killed_at = time;
            diag(sprintf 'primary :%d SIGKILLed at %.2f s', $P, $killed_at - $t0);
        }
        sleep 0.02;
        next;
    }
    # One INFO answer is one moment: the counters it holds are from before a promotion whenever
    # it still says role:slave.
    if (!$promoted) {
        my $info = $replica->info('replication', 'commandstats', 'errorstats');
        if (($info->{role} // '') eq 'slave') {
            $last_slave_info = $info;
        } elsif (($info->{role} // '') eq 'master') {
            $promoted = time;
        }
    }
    my @addrs = $set->master_addrs;
    for my $i (0 .. $#addrs) {
        $switch_seen{$i} //= time if ($addrs[$i] // '') eq "127.0.0.1:$R";
    }
    $switched_at //= time if keys %switch_seen == @addrs;
    for my $n (@nodes) {
        my $st = eval { $n->stats->{redis}{state} } // '(no stats)';
        my $k = $name{ $n->port };
        $down_at{$k} //= time if $st ne 'connected';
        $up_at{$k} //= time if $down_at{$k} && $st eq 'connected';
    }
    last if $switched_at && time - $switched_at >= $AFTER_SWITCH;
    last if time - $killed_at > $FAILOVER_LIMIT;
    sleep 0.02;
}
SSERedis::stop_paced_publishers($stop_file, values %pub);
my $stopped_at = time;

ok($switched_at, "the sentinels promoted the replica within $FAILOVER_LIMIT s of the SIGKILL")
    or do { done_testing; exit };
diag(sprintf 'failover: the replica was master %s s after the SIGKILL, the sentinels reported it %s s after; stats said connected again: %s',
     $promoted ? sprintf('%.2f', $promoted - $killed_at) : '?', join(', ', map { sprintf '%.2f', $switch_seen{$_} - $killed_at } sort keys %switch_seen),
     join(', ', map { "$_ " . ($up_at{$_} ? sprintf('%.2f s', $up_at{$_} - $killed_at) : 'not yet') } 'A', 'B'));
is((split /\n/, $replica->cli('ROLE'))[0], 'master', "ROLE of the new primary :$R is master");

ok(SSERedis::wait_connected($_, 10), 'node :' . $_->port . ' is connected again') for @nodes;

# --- what was published ------------------------------------------------------------------------
my (@pubs, %by_id);
for my $tag ('A', 'B') {
    for my $p (SSERedis::read_paced_publisher_log($pub{$tag}[1])) {
        $p->{data} = "$p->{tag} $p->{n}";
        push @pubs, $p;
    }
}
my @ok = grep { $_->{status} == 202 } @pubs;
my @refused = grep { $_->{status} != 202 } @pubs;
is(scalar @refused, 0, 'every publish was answered 202 (' . scalar(@pubs) . ' publishes)')
    or diag(join "\n", map { sprintf '%s %d: %d at %.2f s', @$_{qw(tag n status)}, $_->{sent} - $t0 } @refused[0 .. ($#refused < 9 ? $#refused : 9)]);
$by_id{ $_->{id} } = $_ for @ok;
is(scalar keys %by_id, scalar @ok, 'each 202 has its own id');
my $when = sub { sprintf '%+.2f s from the kill', $_[0] - $killed_at };
for my $tag ('A', 'B') {
    my @mine = grep { $_->{tag} eq $tag } @ok;
    cmp_ok(scalar(grep { $_->{answered} < $killed_at } @mine), '>=', 10, "$tag published before the kill");
    cmp_ok(scalar(grep { $_->{sent} > ($switched_at // 0) + 1 } @mine), '>=', 10, "$tag published after the failover");
    my @bad = grep { $_->{redis} !~ /^(?:forwarded|queued)$/ } @mine;
    is(scalar @bad, 0, "$tag: every reply says \"redis\":\"forwarded\" or \"queued\"")
        or diag(join ' ', map { "$_->{n}:$_->{redis}" } @bad);
    my @queued = grep { $_->{redis} eq 'queued' } @mine;
    cmp_ok(scalar @queued, '>=', 1, "$tag: publishes while the link was down were answered \"queued\" (" . scalar(@queued) . ')')
        or diag(join ' ', map { "$_->{n}:$_->{redis}\@" . $when->($_->{sent}) } @mine);
    my $up = $up_at{$tag};
    my @late_queued = $up ? grep { $_->{sent} > $up + 0.5 && $_->{redis} ne 'forwarded' } @mine : ();
    ok($up && !@late_queued, "$tag: publishes from 0.5 s after its stats said connected again were \"forwarded\"")
        or diag(join ' ', map { "$_->{n}:$_->{redis}\@" . $when->($_->{sent}) } @mine);
}

# --- each node's stream: every event answered 202, once, same id, each node's publish order ----
for my $s ([A => $sa], [B => $sb]) {
    my ($node, $stream) = @$s;
    $stream->events(scalar @ok, 10);
    $stream->drain(0.5);
    my @got = $stream->events;
    my %seen;
    my @dups = grep { $seen{ $_->{id} }++ } @got;
    is(scalar @dups, 0, "$node: no event twice") or diag(join ' ', map { "$_->{id}:$_->{data}" } @dups);
    my @unknown = grep { !$by_id{ $_->{id} } } @got;
    is(scalar @unknown, 0, "$node: no event that was not answered 202") or diag(join ' ', map { "$_->{id}:$_->{data}" } @unknown);
    my @missing = grep { !$seen{ $_->{id} } } @ok;
    is(scalar @missing, 0, "$node: every one of the " . scalar(@ok) . ' events answered 202 is there')
        or diag(join "\n", map { sprintf '%s %d id %s (%s, answered %s)', @$_{qw(tag n id)}, $when->($_->{sent}), $_->{redis} }
                           @missing[0 .. ($#missing < 19 ? $#missing : 19)]);
    my @wrong = grep { $by_id{ $_->{id} } && $_->{frame} ne frame($_->{id}, $by_id{ $_->{id} }{data}) } @got;
    is(scalar @wrong, 0, "$node: each event has the data and the id its publish reply gave, exactly")
        or diag(explain [@wrong[0 .. ($#wrong < 4 ? $#wrong : 4)]]);
    for my $tag ('A', 'B') {
        my @in_order = map { $_->{id} } grep { $by_id{ $_->{id} } && $by_id{ $_->{id} }{tag} eq $tag } @got;
        my $diff = first_difference(\@in_order, [map { $_->{id} } grep { $_->{tag} eq $tag } @ok],
                                    sub { my $p = $by_id{ $_[0] }; "$_[0] ($p->{data}, " . $when->($p->{sent}) . ", $p->{redis})" });
        ok(!defined $diff, "$node: ${tag}'s events in ${tag}'s publish order") or diag($diff);
    }
    ok(!$stream->eof, "$node: the stream is still open");
}

# --- the new primary -----------------------------------------------------------------------------
my $new = $replica;
for my $n (@nodes) {
    my $ok = SSETest::wait_until(sub { node_clients($new, $n) > 0 }, 5);
    ok($ok, "CLIENT LIST of the new primary :$R holds connections of node :" . $n->port)
        or diag(join ' ', $new->client_names('sse-'));
}
{
    my @subs = sentinel_subscribers();
    cmp_ok(scalar @subs, '>=', scalar @nodes, 'the sentinels still have a subscriber per node') or diag(join "\n", @subs);
}

# Its history of the channel: what the replica had when promoted, then what the nodes sent it.
{
    my @entries = map { my $e = eval { decode_json($_) }; $e ? $e : { i => "(not JSON: $_)" } }
                  grep { length } split /\n/, $new->cli('LRANGE', 'sse:fo', 0, -1);
    my %count;
    $count{ $_->{i} }++ for @entries;
    my @twice = grep { $count{$_} > 1 } sort keys %count;
    is(scalar @twice, 0, "the new primary's history of sse:fo holds no event twice") or diag(join ' ', @twice);
    my @unknown = grep { !$by_id{ $_->{i} } } @entries;
    is(scalar @unknown, 0, "the new primary's history holds only events answered 202") or diag(explain \@unknown);
    my @after = grep { $_->{sent} > $killed_at && !$count{ $_->{id} } } @ok;
    is(scalar @after, 0, 'the new primary\'s history holds every event published after the kill')
        or diag(join ' ', map { "$_->{data}" } @after);
    for my $tag ('A', 'B') {
        my @h = map { $_->{i} } grep { $by_id{ $_->{i} } && $by_id{ $_->{i} }{tag} eq $tag } @entries;
        my @w = map { $_->{id} } grep { $_->{tag} eq $tag && $count{ $_->{id} } } @ok;
        my $diff = first_difference(\@h, \@w);
        ok(!defined $diff, "the new primary's history: ${tag}'s events in ${tag}'s publish order") or diag($diff);
    }
    # Asynchronous replication: what the old primary acknowledged and had not passed on to the
    # replica when it died is not in the new primary's history (the streams above got it live).
    my @lost = grep { !$count{ $_->{id} } } @ok;
    diag(sprintf 'events answered 202 that are not in the new primary\'s history: %d (%s)', scalar @lost,
         join(' ', map { $_->{data} . '@' . $when->($_->{sent}) } @lost) || 'none');
}

# No node wrote to the replica before it was promoted: Redis counts every FCALL it is sent and
# every READONLY it answers (a write to a replica), and an INFO that still says role:slave shows
# counters from before the promotion.
ok($pre_kill_info && ($pre_kill_info->{role} // '') eq 'slave', 'INFO of the replica just before the kill says role:slave');
ok($last_slave_info, 'INFO of the replica read after the kill while still a replica');
for my $info (grep { defined } $pre_kill_info, $last_slave_info) {
    ok(!defined $info->{cmdstat_fcall}, 'the replica ran no FCALL while a replica (' . ($info->{cmdstat_fcall} // 'none') . ')');
    ok(!defined $info->{errorstat_READONLY}, 'the replica refused no write while a replica (' . ($info->{errorstat_READONLY} // 'none') . ')');
}
{
    my $e = $new->info('errorstats');
    ok(!defined $e->{errorstat_READONLY}, "the new primary :$R never answered READONLY, before or after its promotion")
        or diag($e->{errorstat_READONLY});
}

# --- what the nodes logged and counted ----------------------------------------------------------
for my $n (@nodes) {
    my $k = $name{ $n->port };
    my @l = redis_lines($n);
    my @connected = grep { $_->[2] =~ /^sse: redis connected to / } @l;
    my @lost = grep { $_->[2] =~ /^sse: redis connection to 127\.0\.0\.1:$P lost: / } @l;
    my @back = grep { $_->[2] =~ /^sse: redis reconnected to 127\.0\.0\.1:$R after \d+ attempts?; sending \d+ queued events?/ } @l;
    ok(@connected && !grep({ $_->[0] ne 'notice' || $_->[2] !~ /^sse: redis connected to 127\.0\.0\.1:$P\b/ } @connected),
       "$k: 'sse: redis connected to 127.0.0.1:$P' (the primary) at notice") or diag(show_lines(@l));
    is(scalar @lost, 1, "$k: one 'sse: redis connection to 127.0.0.1:$P lost: ...' line") or diag(show_lines(@l));
    is($lost[0][0], 'warn', "$k: it is a warn") if @lost;
    is(scalar @back, 1, "$k: one 'sse: redis reconnected to 127.0.0.1:$R after N attempts; sending N queued events' line")
        or diag(show_lines(@l));
    if (@back) {
        is($back[0][0], 'notice', "$k: it is a notice");
        my ($sending) = $back[0][2] =~ /sending (\d+) queued/;
        my $queued = grep { $_->{tag} eq $k && $_->{redis} eq 'queued' } @ok;
        cmp_ok($sending, '>=', $queued, "$k: it sends at least the $queued events answered \"queued\" ($sending)");
    }
    my @readonly = grep { /READONLY/ } split /\n/, $n->error_log;
    is(scalar @readonly, 0, "$k: no READONLY in error.log") or diag(join "\n", @readonly);
    my $r = $n->stats->{redis};
    is($r->{state}, 'connected', "$k: stats redis.state is connected");
    cmp_ok($r->{reconnects}, '>=', 1, "$k: stats redis.reconnects is at least 1 ($r->{reconnects})");
    is(join(' ', $n->worker_pids), $workers{ $n->port }, "$k: the same workers as at the start (none exited)");
}

# --- a node whose first sentinel refuses connections ---------------------------------------------
{
    my $dead = $set->refused_address;
    my $url_c = $set->url(first => $dead);
    @late = $set->nodes(1, server => $locations, url => $url_c, start => 0);
    my ($C) = @late;
    ok(eval { $C->start } && SSERedis::wait_connected($C, 10), "node C with sse_redis $url_c is connected")
        or do { diag($@) if $@; $_->finish for @nodes; done_testing; exit };
    my @connected = grep { $_->[2] =~ /^sse: redis connected to / } redis_lines($C);
    ok(@connected && !grep({ $_->[2] !~ /^sse: redis connected to 127\.0\.0\.1:$R\b/ } @connected),
       "C: 'sse: redis connected to 127.0.0.1:$R' (the new primary)") or diag(show_lines(redis_lines($C)));
    ok(SSETest::wait_until(sub { node_clients($new, $C) > 0 }, 5), "CLIENT LIST of the new primary holds C's connections")
        or diag(join ' ', $new->client_names('sse-'));
    my $a2 = $A->subscribe('/events?topics=fc');
    my $c2 = $C->subscribe('/events?topics=fc');
    ok($new->wait_numsub('sse:fc', 2), 'PUBSUB NUMSUB sse:fc is 2 (A and C)');
    my $e1 = $C->publish_event('/pub?topic=fc', 'from C');
    is($e1->[2]{redis}, 'forwarded', 'a publish on C: "redis":"forwarded"');
    $a2->wait_body(length(":ok\n\n" . $e1->[1]), 10);
    my $e2 = $A->publish_event('/pub?topic=fc', 'from A');
    for ([A => $a2], [C => $c2]) {
        my ($k, $s) = @$_;
        $s->wait_body(length(":ok\n\n" . $e1->[1] . $e2->[1]), 10);
        $s->drain(0.3);
        is($s->body, ":ok\n\n" . $e1->[1] . $e2->[1], "$k: C's event, then A's, exactly");
    }
    $_->close for $a2, $c2;
}

$_->close for $sa, $sb;
$_->finish for @nodes, @late;
diag(sprintf 'the test took %.1f s (publishing %.1f s)', time - $t_begin, $stopped_at - $t0);
done_testing;
