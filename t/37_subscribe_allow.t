# sse_subscribe_allow: a request may only ask for the channels its patterns allow, by name or
# by prefix, with variables (a user limited to user:<own id> plus public channels). Anything
# else is answered 403 with the channel named, nothing is subscribed or counted, and an info
# line says why. The user id comes from auth_request (docs/recipes.md's recipe, with a real auth
# service on another port) or, in /events-h, straight from a header.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

# Port 1 plays the auth service: a token maps to a user (204 with X-User), a banned token to
# 403, anything else to 401. /events is docs/recipes.md's recipe as it stands.
my $t = SSETest->new(extra_ports => 1, http => <<'HTTP', server => <<'CONF')->start;
    server {
        listen 127.0.0.1:%%PORT1%%;
        location = /check {
            if ($http_authorization = "Bearer alice-token") { add_header X-User alice; return 204; }
            if ($http_authorization = "Bearer banned") { return 403; }
            return 401;
        }
    }
HTTP
        location = /auth {
            internal;
            proxy_pass http://127.0.0.1:%%PORT1%%/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location = /events {
            auth_request /auth;                          # your auth service answers 2xx with X-User
            auth_request_set $user_id $upstream_http_x_user;
            sse_subscribe $arg_topics;
            sse_subscribe_allow "user:$user_id" "public.*" announcements;
            sse_user $user_id;                           # publish to her with sse_publish_user
            sse_heartbeat off;
        }
        location = /events-h {
            sse_subscribe $arg_topics;
            sse_subscribe_allow "user:$http_x_user" "public.*" announcements;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /to-user {
            sse_publish_user $arg_user;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $alice = {'X-User' => 'alice'};

my $s = $t->subscribe('/events-h?topics=user:alice,public.news,announcements', headers => $alice);
is($s->status, 200, 'alice: her own channel, a public.* channel and a named one: 200');
is($s->wait_body(5), $PRE, 'the stream opens');
my $e = $t->publish_event('/pub?topic=user:alice', 'for alice');
is($s->wait_body(length($PRE . $e->[1]), 5), $PRE . $e->[1], 'and receives her events');

my $before = $t->stats;
for my $case (['user:bob', $alice, 'user:bob'], ['public.news,user:bob', $alice, 'user:bob'],
              ['publicity', $alice, 'publicity'], ['user:alice', {}, 'user:alice'],
              ['user:alice', {'X-User' => 'bob'}, 'user:alice']) {
    my ($topics, $headers, $named) = @$case;
    my $r = $t->request('GET', "/events-h?topics=$topics", headers => $headers);
    my $who = $headers->{'X-User'} // 'nobody';
    is($r->{status}, 403, "$who asking for $topics: 403");
    is($r->{body}, qq(channel "$named" is not allowed here\n), "$who asking for $topics: the channel is named");
}
my $head = $t->request('HEAD', '/events-h?topics=user:bob', headers => $alice);
is($head->{status}, 403, 'HEAD is checked too');
my $after = $t->stats;
is_deeply([@$after{qw(subscribers channels)}], [@$before{qw(subscribers channels)}],
          'refused requests subscribe nothing: the same subscribers and channels');
like($t->error_log, qr/\[info\].*sse: subscribe refused: channel "user:bob" is not allowed by sse_subscribe_allow/,
     'an info line names the channel');

# The recipe: auth_request binds the user from the auth service's answer; its 401 and 403 pass
# through to the client; the user gets only their own channel (and the public ones).
my $tok = {Authorization => 'Bearer alice-token'};
my $a = $t->subscribe('/events?topics=user:alice,public.news', headers => $tok);
is($a->status, 200, 'auth_request: alice with her token gets her own channel');
is($a->wait_body(5), $PRE, 'auth_request: the stream opens');
my $e2 = $t->publish_event('/pub?topic=user:alice', 'for alice, through auth_request');
is($a->wait_body(length($PRE . $e2->[1]), 5), $PRE . $e2->[1], 'auth_request: and receives her events');
# The user key bound from the auth service's answer routes events to her streams.
my $e3 = $t->publish_event('/to-user?user=alice', 'to the user the auth service named');
is($e3->[2]{subscribers}, 1, 'sse_publish_user alice: her one stream');
is($a->wait_body(length($PRE . $e2->[1] . $e3->[1]), 5), $PRE . $e2->[1] . $e3->[1], 'auth_request: sse_user binds her user key');
my $r = $t->request('GET', '/events?topics=user:bob', headers => $tok);
is_deeply([$r->{status}, $r->{body}], [403, qq(channel "user:bob" is not allowed here\n)],
          "auth_request: alice asking for bob's channel: 403 from us");
is($t->request('GET', '/events?topics=public.news')->{status}, 401, 'auth_request: no token: the 401 passes through');
is($t->request('GET', '/events?topics=public.news', headers => {Authorization => 'Bearer banned'})->{status}, 403,
   'auth_request: a banned token: the 403 passes through');
$a->close;

$s->close;
$t->finish;
done_testing;
