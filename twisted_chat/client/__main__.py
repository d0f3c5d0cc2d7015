from twisted_chat.client.main import main

main()
