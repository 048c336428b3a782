# A position that cannot be resumed exactly: the reset event first (exact bytes, the reason, the
# id as given), then every retained event of the stream's channels, then live. Reasons: evicted
# (older than the retained history), malformed, future, before_restart (an id older than the
# zone, also after a full restart). sse_reset_event off: no reset event, the retained events
# still replayed; sse_reset_event gap: the event is named gap.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;
use SSEExpect qw(frame reset_frame frames);

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /events-off {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_reset_event off;
        }
        location = /events-gap {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_reset_event gap;
        }
        location = /pub {
            sse_history 3;
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

# Publishes one event to $channel; returns [id, frame, reply].
sub pub { my ($channel, @event) = @_; return $t->publish_event("/pub?topic=$channel", @event) }

my $resets = 0;      # reset events the streams received
my $replayed = 0;    # events replayed from history

# Opens a resuming stream, checks its body is exactly $want (preamble, reset, replay), then
# publishes a live event to $live_channel and checks it follows.
sub resume_ok {
    my (%o) = @_;
    my $path = $o{path} // "/events?topics=$o{topics}";
    my $s = $t->resume($path, $o{id});
    is($s->status, 200, "$o{label}: 200");
    my $want = $PRE . ($o{reset} // '') . frames(@{ $o{replay} });
    my $n = @{ $o{replay} } + ($o{reset} ? 1 : 0);
    $s->events($n, 10);
    is($s->body, $want, "$o{label}: " . ($o{reset} ? 'the reset event, then ' : 'no reset event, ')
                        . scalar(@{ $o{replay} }) . ' retained events');
    $resets++ if $o{reset} && $path !~ /events-off/;
    $replayed += @{ $o{replay} };
    my $live = pub($o{live_channel} // $o{topics} // 'r', "live after $o{label}");
    $s->events($n + 1, 10);
    is($s->body, $want . $live->[1], "$o{label}: then the live event");
    $s->close;
    return $live;
}

# --- evicted -----------------------------------------------------------------------------------
my @e = map { pub('r', "e$_", $_ % 2 ? 'odd' : undef) } 1 .. 6;    # history 3: e4 e5 e6 retained
is_deeply([@{ $t->get_json('/pub?topic=r') }{qw(retained oldest_id newest_id events_published)}],
          [3, $e[3][0], $e[5][0], 6], 'GET r: 3 retained (sse_history 3) of 6 published');

resume_ok(label => 'evicted (from e1)', topics => 'r', id => $e[0][0],
          reset => reset_frame($e[0][0], 'evicted'), replay => [@e[3 .. 5]]);
# The live event above is now in the history: e5 e6 live1.
my $g = $t->get_json('/pub?topic=r');
my @r = (@e[4, 5], [$g->{newest_id}, frame($g->{newest_id}, 'live after evicted (from e1)')]);
is_deeply([@$g{qw(retained oldest_id)}], [3, $e[4][0]], 'GET r: still 3 retained, now from e5');

# Boundary: from e4 every later event is retained: exact resume, no reset.
my $l = resume_ok(label => 'from e4: every later event retained (exact)', topics => 'r', id => $e[3][0],
                  replay => [@r]);
@r = (@r[1, 2], $l);
# Ids are consecutive here (one channel published): the id just before the oldest retained is
# the newest evicted event's; from it nothing is missing.
$l = resume_ok(label => 'from oldest retained - 1 (exact)', topics => 'r', id => $r[0][0] - 1,
               replay => [@r]);
@r = (@r[1, 2], $l);
# From one before that: the event at oldest - 1 is after the position and was evicted.
$l = resume_ok(label => 'evicted (from oldest retained - 2)', topics => 'r', id => $r[0][0] - 2,
               reset => reset_frame($r[0][0] - 2, 'evicted'), replay => [@r]);
@r = (@r[1, 2], $l);

# --- malformed -------------------------------------------------------------------------------
for my $bad ('abc', '12x', '1234567890123456789012345', '-5', '1.5', '0x10', '123456789012345678901') {
    $l = resume_ok(label => "malformed '$bad'", topics => 'r', id => $bad,
                   reset => reset_frame($bad, 'malformed'), replay => [@r]);
    @r = (@r[1, 2], $l);
}
# Also by the query argument, URL-decoded.
$l = resume_ok(label => 'malformed by query argument', path => '/events?topics=r&last_event_id=a%20b', topics => 'r',
               reset => reset_frame('a b', 'malformed'), replay => [@r]);
@r = (@r[1, 2], $l);
# A line break in it is escaped, in the reset event and in the log line.
$l = resume_ok(label => 'malformed with a line break', path => '/events?topics=r&last_event_id=a%0Ab', topics => 'r',
               reset => reset_frame('a\nb', 'malformed'), replay => [@r]);
@r = (@r[1, 2], $l);
like($t->error_log, qr/\[info\].*sse: cannot resume exactly after id "a\\x0Ab" \(malformed\)/,
     'the info line shows the id escaped');
# Echoed truncated to 64 bytes.
{
    my $long = join '', map { chr(ord('a') + $_ % 26) } 0 .. 199;
    $l = resume_ok(label => 'malformed, 200 bytes long', topics => 'r', id => $long,
                   reset => reset_frame(substr($long, 0, 64), 'malformed'), replay => [@r]);
    @r = (@r[1, 2], $l);
}
# An id with a quote and a backslash: the reset data is still valid JSON echoing it.
{
    my $odd = 'x"y\\z';
    my $s = $t->resume('/events?topics=r', $odd);
    my @ev = $s->events(4, 10);
    is($ev[0]{event}, 'reset', 'quote and backslash: a reset event first');
    my $j = eval { decode_json($ev[0]{data} // '') };
    is_deeply($j, {last_event_id => $odd, reason => 'malformed'}, 'quote and backslash: its data is JSON echoing the id');
    is(join('', map { $_->{frame} } @ev[1 .. 3]), frames(@r), 'quote and backslash: then the 3 retained events');
    $resets++;
    $replayed += 3;
    $s->close;
}

# --- future ----------------------------------------------------------------------------------
{
    my $newest = $r[-1][0];
    for my $f ($newest + 1, $newest + 1000000, '99999999999999999999', '18446744073709551616') {
        $l = resume_ok(label => "future $f", topics => 'r', id => $f,
                       reset => reset_frame($f, 'future'), replay => [@r]);
        @r = (@r[1, 2], $l);
    }
    # The newest id itself is not in the future.
    $l = resume_ok(label => 'the newest id', topics => 'r', id => $r[-1][0], replay => []);
    @r = (@r[1, 2], $l);
}

# --- before the zone -------------------------------------------------------------------------
for my $old ('1', '0', '1000000000000000') {
    $l = resume_ok(label => "before_restart $old", topics => 'r', id => $old,
                   reset => reset_frame($old, 'before_restart'), replay => [@r]);
    @r = (@r[1, 2], $l);
}

# --- several channels: one evicted, one complete ----------------------------------------------
{
    # s: 2 events, both retained, published before x; r: its events after x partly evicted.
    my @s = map { pub('s', "s$_") } 1 .. 2;
    my $x = $s[-1][0];
    my @more = map { pub('r', "more$_") } 1 .. 4;    # r keeps more2..more4: more1 is evicted
    my @all = sort { $a->[0] <=> $b->[0] } @s, @more[1 .. 3];
    $l = resume_ok(label => 'r,s with an event of r evicted', topics => 'r,s', id => $x,
                   reset => reset_frame($x, 'evicted'), replay => [@all], live_channel => 'r');
    @r = (@more[2, 3], $l);
    # s alone from x: complete, exact.
    my $ls = resume_ok(label => 's alone from the same id', topics => 's', id => $x, replay => []);
    # r,s from the newest of r minus nothing: from the id of more2: more3 more4 live (r), live s.
    $l = resume_ok(label => 'r,s from more2 (exact)', topics => 'r,s', id => $more[1][0],
                   replay => [sort { $a->[0] <=> $b->[0] } @r, $ls], live_channel => 's');
}

# --- sse_reset_event off and gap ---------------------------------------------------------------
{
    my @t = map { pub('t', "t$_") } 1 .. 5;    # t3 t4 t5 retained
    my $x = $t[0][0];
    my $lo = resume_ok(label => 'reset off, evicted', path => '/events-off?topics=t', topics => 't', id => $x,
                       replay => [@t[2 .. 4]]);
    my @tr = (@t[3, 4], $lo);
    $lo = resume_ok(label => 'reset off, malformed', path => '/events-off?topics=t', topics => 't', id => 'abc',
                    replay => [@tr]);
    @tr = (@tr[1, 2], $lo);
    $lo = resume_ok(label => 'reset off, exact', path => '/events-off?topics=t', topics => 't', id => $tr[0][0],
                    replay => [@tr[1, 2]]);
    @tr = (@tr[1, 2], $lo);
    $lo = resume_ok(label => 'reset gap, evicted', path => '/events-gap?topics=t', topics => 't', id => $x,
                    reset => reset_frame($x, 'evicted', 'gap'), replay => [@tr]);
    @tr = (@tr[1, 2], $lo);
    $lo = resume_ok(label => 'reset gap, future', path => '/events-gap?topics=t', topics => 't', id => $tr[-1][0] + 5,
                    reset => reset_frame($tr[-1][0] + 5, 'future', 'gap'), replay => [@tr]);
}

my $st = $t->stats;
is($st->{resets}, $resets, "stats: resets == $resets, the reset events sent");
is($st->{events_replayed}, $replayed, "stats: events_replayed == $replayed, the events replayed");

# --- a full restart: ids from the previous zone are before_restart ------------------------------
{
    my $old_newest = $t->get_json('/pub?topic=r')->{newest_id};
    $t->stop;
    $t->start;
    is($t->request('GET', '/pub?topic=r')->{status}, 404, 'after a full restart the history is gone');
    my @n = map { pub('r', "new$_") } 1 .. 2;
    cmp_ok($n[0][0], '>', $old_newest, 'the new zone issues larger ids');
    resume_ok(label => 'after a restart, an id of the old zone', topics => 'r', id => $old_newest,
              reset => reset_frame($old_newest, 'before_restart'), replay => [@n]);
    my $st = $t->stats;
    is($st->{resets}, 1, 'stats of the new zone: 1 reset');
    is($st->{events_replayed}, 2, 'stats of the new zone: 2 events replayed');
}

$t->finish;
done_testing;
