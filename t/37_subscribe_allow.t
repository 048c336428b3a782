# sse_subscribe_allow: a request may only ask for the channels its patterns allow, by name or
# by prefix, with variables (a user limited to user:<own id> plus public channels). Anything
# else is answered 403 with the channel named, nothing is subscribed or counted, and an info
# line says why. The user id here comes from a header an auth layer would set.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_subscribe_allow "user:$http_x_user" "public.*" announcements;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $alice = {'X-User' => 'alice'};

my $s = $t->subscribe('/events?topics=user:alice,public.news,announcements', headers => $alice);
is($s->status, 200, 'alice: her own channel, a public.* channel and a named one: 200');
is($s->wait_body(5), $PRE, 'the stream opens');
my $e = $t->publish_event('/pub?topic=user:alice', 'for alice');
is($s->wait_body(length($PRE . $e->[1]), 5), $PRE . $e->[1], 'and receives her events');

my $before = $t->stats;
for my $case (['user:bob', $alice, 'user:bob'], ['public.news,user:bob', $alice, 'user:bob'],
              ['publicity', $alice, 'publicity'], ['user:alice', {}, 'user:alice'],
              ['user:alice', {'X-User' => 'bob'}, 'user:alice']) {
    my ($topics, $headers, $named) = @$case;
    my $r = $t->request('GET', "/events?topics=$topics", headers => $headers);
    my $who = $headers->{'X-User'} // 'nobody';
    is($r->{status}, 403, "$who asking for $topics: 403");
    is($r->{body}, qq(channel "$named" is not allowed here\n), "$who asking for $topics: the channel is named");
}
my $head = $t->request('HEAD', '/events?topics=user:bob', headers => $alice);
is($head->{status}, 403, 'HEAD is checked too');
my $after = $t->stats;
is_deeply([@$after{qw(subscribers channels)}], [@$before{qw(subscribers channels)}],
          'refused requests subscribe nothing: the same subscribers and channels');
like($t->error_log, qr/\[info\].*sse: subscribe refused: channel "user:bob" is not allowed by sse_subscribe_allow/,
     'an info line names the channel');

$s->close;
$t->finish;
done_testing;
